"""Graph passes: one module (or folder) per pass; `manager.PIPELINE` is the order.

    base.py              DitPass, PassContext, PassReport / SiteDecision, attention_nodes / set_plan
    attention.py         sites -> ditaccel::attention with a dense plan (the one rewrite)
    sparse.py            sets plan.sparse on video self/joint sites
    attention_quant.py   sets plan.quant = "int8"
    step_cache/          the step-cache pass and its head/body/tail splitter (always last)
    manager.py           PIPELINE and PassManager
"""
