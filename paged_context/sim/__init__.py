"""`paged_context.sim`: the two papers' simulators and their inputs: Neural Paging block
traces (`traces`), the cooperative-paging probe simulator (`probes`), planted-fact
conversations (`synthetic`), and conversations with probes, LoCoMo's among them
(`conversations`)."""
