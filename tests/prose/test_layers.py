"""The package stands in floors, and no import climbs back up (issue 38): each module of identity_study sits on one
floor, and every module it imports (at the top or inside a function) sits on the same floor or a lower one. With
test_imports' check that the graph has no circle, a reader can take the rooms floor by floor, bottom up."""
import pytest

from test_imports import graph

# bottom first; what each floor is for
FLOORS = {
    "the science": {"units", "data", "models", "propagation", "diagrams", "plotting"},    # nets, data, their pictures
    "one run": {"records", "params", "train"},                    # a run's parameters, its training, its record
    "the plan": {"experiments", "protocol", "sweep_plan"},        # which runs the paper's tables and the protocol ask
    "execution": {"sweep_checks", "sweep_local", "sweep_slurm", "sweep_status"},    # running a plan, here or on Slurm
    "results": {"findings", "figures"},                            # judging and drawing the records
    "commands": {"sweep", "cli"},                                  # what a user types
}
FLOOR_OF = {m: i for i, floor in enumerate(FLOORS.values()) for m in floor}


def test_every_module_has_a_floor():
    missing = sorted(set(graph()) - set(FLOOR_OF))
    assert not missing, f"modules on no floor of tests/prose/test_layers.py FLOORS: {missing}"


def arrows_up(edges: dict) -> list:
    return sorted((m, n) for m, targets in edges.items() for n in targets if FLOOR_OF[n] > FLOOR_OF[m])


def test_no_import_climbs_a_floor():
    up = arrows_up(graph())
    names = list(FLOORS)
    assert not up, "imports that climb: " + "; ".join(
        f"{m} ({names[FLOOR_OF[m]]}) imports {n} ({names[FLOOR_OF[n]]})" for m, n in up)


def test_the_check_sees_an_arrow_up():
    edges = {m: set(t) for m, t in graph().items()}
    assert not arrows_up(edges)
    edges["records"].add("findings")                   # the record reader asking the judge: one floor too high
    assert arrows_up(edges) == [("records", "findings")]
    with pytest.raises(KeyError):
        arrows_up({"units": {"a_module_on_no_floor"}})
