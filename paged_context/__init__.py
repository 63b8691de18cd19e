"""paged-context: memory paging for LLM conversations.

Old turns become pages; the pages worth keeping stay resident, the rest are replaced by
keyword bookmarks `[p7:Caroline,adoption,agency]`, and the model brings them back with
the `recall` tool. This package is the engine-agnostic core: no torch, no vLLM. The
engines are in `paged_context.patches`, the server and `PagedLLM` in `paged_context.serve`.
"""

__version__ = "0.1.0"

from .bookmarks import Bookmark
from .keywords import bookmarks
from .pages import Page, Turn, segment
from .policies import POLICIES, Policy, ResidentSet
from .policy_registry import make_policy
from .recall import RECALL_INSTRUCTION, RecallError, parse_recall_arguments, recall_tool, render_recall
from .session import PagedSession, PagingConfig
from .sim.conversations import Conversation, Probe, load_locomo
from .store import PageStore, SessionBusy, SQLiteStore, open_store

__all__ = [
    "Bookmark",
    "Conversation",
    "POLICIES",
    "Page",
    "PagedSession",
    "PagingConfig",
    "PageStore",
    "Policy",
    "Probe",
    "RECALL_INSTRUCTION",
    "RecallError",
    "ResidentSet",
    "SessionBusy",
    "SQLiteStore",
    "Turn",
    "bookmarks",
    "load_locomo",
    "make_policy",
    "open_store",
    "parse_recall_arguments",
    "recall_tool",
    "render_recall",
    "segment",
]
