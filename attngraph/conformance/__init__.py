"""Cross-backend conformance: a named case corpus, a runner against a float64 reference, error
budgets by dtype, known deviations as data, and reports (terminal, JSON, Markdown, HTML).

    from attngraph.conformance import all_cases, run_conformance, targets_for, installed_backends
    results = run_conformance(all_cases(), targets_for(installed_backends()))
"""

from attngraph.conformance.budgets import BACKEND_BUDGETS, BUDGETS, KNOWN_DEVIATIONS, Verdict, compare
from attngraph.conformance.case import Case
from attngraph.conformance.cases import all_cases, edge_cases, named_cases, random_cases
from attngraph.conformance.reference import evaluate
from attngraph.conformance.runner import (
    Result,
    Target,
    installed_backends,
    run_case,
    run_conformance,
    select_cases,
    summary,
    targets_for,
)

__all__ = [
    "BACKEND_BUDGETS", "BUDGETS", "KNOWN_DEVIATIONS", "Case", "Result", "Target", "Verdict", "all_cases",
    "compare", "edge_cases", "evaluate", "installed_backends", "named_cases", "random_cases", "run_case",
    "run_conformance", "select_cases", "summary", "targets_for",
]
