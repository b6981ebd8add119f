"""The explain report: what the analysis found in a graph and what each pass did with it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from .graph.sites import GraphAnalysis
from .passes.base import KEPT, LOWERED, PLANNED, REWRITTEN, PassReport, SiteDecision


@dataclass
class GraphReport:
    """Report of one Dynamo graph (a model with graph breaks gives several)."""

    graph_id: str
    analysis: GraphAnalysis
    passes: list[PassReport]
    pipeline: list[str]
    pipeline_uuid: str
    compiler: str
    preset: Optional[str]
    error: Optional[str] = None   # set when the passes failed and the graph ran unchanged
    notes: list[str] = field(default_factory=list)
    kernels: dict = field(default_factory=dict)
    """module path -> (tunable op, autotune.Choice) of the site's last call (set by `explain`,
    which runs the model): the kernel that ran and whether it came from the tuning cache."""

    def decisions_for(self, site_index: int) -> list[SiteDecision]:
        """Every pass's decision about an attention site, in pipeline order."""
        return [d for report in self.passes for d in report.decisions if d.site_index == site_index]

    def rows(self) -> list[dict]:
        """One row per attention site: its description, its final plan (or "original" when it
        was kept) and the notes of every pass that decided about it."""
        rows = []
        for site in self.analysis.attention:
            decisions = self.decisions_for(site.index)
            if decisions and decisions[0].action == REWRITTEN:
                plan = [d.plan for d in decisions if d.plan][-1]
                note = "; ".join(d.reason for d in decisions if d.reason)
            elif decisions:
                plan, note = "original", "; ".join(d.reason for d in decisions if d.reason)
            else:
                plan = "original"
                note = site.reason if not site.supported else ("no pass ran" if self.error is None else "passes failed")
            text = ""
            if site.text is not None:
                length = site.text.length if site.text.length is not None else "dynamic"
                text = f"text {site.text.position} ({length})"
            ran = self.kernels.get(site.module_path) if plan != "original" else None
            lowered = next((d for d in decisions if d.action == LOWERED), None)
            rows.append({
                "index": site.index, "module": site.module_path or "<top>", "kind": site.kind,
                "tokens": site.tokens, "text": text, "pattern": site.pattern, "layout": site.layout,
                "shape": site.shape_text, "dtype": site.dtype, "plan": plan,
                "kernel": lowered.kernel if lowered else ran[1].describe() if ran else "-",
                "kernel_op": "aten.scaled_dot_product_attention" if lowered else ran[0] if ran else None,
                "kernel_from_cache": lowered.kernel_from_cache if lowered else ran[1].from_cache if ran else None,
                "lowered": lowered is not None,
                "note": note,
            })
        return rows

    def all_notes(self) -> list[str]:
        """The analysis's notes, the graph's (backend) notes, then every pass's, in that order."""
        return [*self.analysis.notes, *self.notes, *(n for r in self.passes for n in r.notes)]

    @property
    def lowered(self) -> int:
        """Sites whose plan is plain dense SDPA, handed to Inductor as aten SDPA (pass lower_dense)."""
        return sum(d.action == LOWERED for r in self.passes for d in r.decisions)

    def format(self) -> str:
        a = self.analysis
        rewritten = sum(r.rewritten for r in self.passes)
        lines = [
            f"ditaccel graph {self.graph_id}: preset={self.preset or '-'} compiler={self.compiler} "
            f"passes={self.pipeline or ['none']} (uuid {self.pipeline_uuid})",
            f"  token grid: {a.grid or a.dynamic_grid or 'unknown'}; "
            f"video tokens: {a.num_video_tokens or (a.dynamic_grid.tokens_expr if a.dynamic_grid else '?')}; "
            f"batch: {a.batch or '?'}{'; dynamic shapes' if a.dynamic else ''}",
            f"  attention sites: {len(a.attention)} found, {rewritten} rewritten"
            f"{f' ({self.lowered} lowered to aten SDPA)' if self.lowered else ''}, "
            f"{len(a.attention) - rewritten} kept; linear sites: {len(a.linear)} "
            f"({sum(s.in_features * s.out_features for s in a.linear):,} weights)",
        ]
        for note in self.all_notes():
            lines.append(f"  note: {note}")
        if self.error:
            lines.append(f"  ERROR: {self.error} -- the graph runs unchanged")
        rows = self.rows()
        if rows:
            cols = ["index", "module", "kind", "text", "pattern", "layout", "shape", "plan", "kernel", "note"]
            heads = ["#", "module", "kind", "text", "pattern", "layout", "shape", "plan", "kernel (source)",
                     "note (why kept)"]
            table = [heads] + [[str(r[c]) for c in cols] for r in rows]
            widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
            for j, row in enumerate(table):
                lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
                if j == 0:
                    lines.append("  " + "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        a = self.analysis
        return {
            "graph_id": self.graph_id, "preset": self.preset, "compiler": self.compiler,
            "pipeline": self.pipeline, "pipeline_uuid": self.pipeline_uuid, "error": self.error,
            "grid": dataclasses.asdict(a.grid) if a.grid else None,
            "num_video_tokens": a.num_video_tokens, "batch": a.batch, "dynamic": a.dynamic,
            "notes": self.all_notes(),
            "lowered": self.lowered,
            "attention": self.rows(),
            "linear": [{"module": s.module_path, "in": s.in_features, "out": s.out_features,
                        "tokens": s.tokens, "bias": s.has_bias} for s in a.linear],
        }


@dataclass
class Explanation:
    """Reports of every graph compiled during one `explain()` call."""

    graphs: list[GraphReport]

    @property
    def sites(self):
        return [s for g in self.graphs for s in g.analysis.attention]

    @property
    def rewritten(self) -> int:
        return sum(r.rewritten for g in self.graphs for r in g.passes)

    def total_line(self) -> str:
        """"12 graphs, 46 of 48 attention sites rewritten" (every graph Dynamo compiled)."""
        graphs = len(self.graphs)
        return (f"{graphs} graph{'s' if graphs != 1 else ''}, {self.rewritten} of {len(self.sites)} attention "
                f"site{'s' if len(self.sites) != 1 else ''} rewritten")

    def format(self) -> str:
        if not self.graphs:
            return "ditaccel: no graph was compiled (the model ran entirely in eager mode?)"
        head = f"ditaccel explain: {self.total_line()}"
        if len(self.graphs) > 1:
            head += " -- the model has graph breaks; each graph is compiled and reported separately"
        return "\n".join([head, *(g.format() for g in self.graphs)])

    def to_dict(self) -> dict:
        return {"graphs": [g.to_dict() for g in self.graphs], "total": self.total_line(),
                "attention_sites": len(self.sites), "rewritten": self.rewritten,
                "lowered": sum(g.lowered for g in self.graphs)}


__all__ = ["GraphReport", "Explanation", "KEPT", "PLANNED", "REWRITTEN", "LOWERED"]
