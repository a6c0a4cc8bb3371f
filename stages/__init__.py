"""The stages, one file each, in the order they run.

Each stage module defines: NAME, SECTION (its config section), VERSION (bump when its output for
the same inputs changes), INPUTS (upstream stage names), OUTPUTS (the files it writes), a frozen
`Params` dataclass and `run(params, inputs, out_dir) -> metrics`. A stage with inputs from outside
the pipeline also defines `fingerprint(params, state_dir) -> dict`, content hashes of those inputs
(source data files, a user's model code) that go into its cache key.
"""

from stages import bench, data, distill, export, prune, quantize, report, teacher

STAGES = (data, teacher, distill, prune, export, quantize, bench, report)
STAGE_NAMES = tuple(stage.NAME for stage in STAGES)
