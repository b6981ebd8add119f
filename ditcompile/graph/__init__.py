"""Graph analysis shared by all passes: attention/linear matching, token grid, joint text."""
from .analysis import analyze_graph
from .attention_match import find_attention_sites
from .linear_match import find_linear_sites
from ..geometry import TextSegment, TokenGrid
from .sites import AttentionSite, GraphAnalysis, LinearSite

__all__ = ["analyze_graph", "find_attention_sites", "find_linear_sites", "AttentionSite",
           "GraphAnalysis", "LinearSite", "TextSegment", "TokenGrid"]
