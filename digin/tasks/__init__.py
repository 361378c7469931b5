"""The tasks: one module per `digin <task>`, each a `Config` dataclass and `run(cfg)` over the stage layer
(digin/stages/). Only the CLI, the demo (which composes tasks) and the toy science harness (digin/science/)
import them."""

# task name → module
TASKS = {
    "demo": "digin.tasks.demo",
    "shard": "digin.tasks.shard",
    "caption": "digin.tasks.caption",
    "invert": "digin.tasks.invert",
    "segment": "digin.tasks.segment",
    "uvce": "digin.tasks.uvce",
    "diff": "digin.tasks.diff",
    "neurons": "digin.tasks.neurons",
    "eval": "digin.tasks.eval",
    "export": "digin.tasks.export",
    "gallery": "digin.tasks.gallery",
    "figure": "digin.tasks.figure",
    "bench": "digin.tasks.bench",
    "toy-train": "digin.tasks.toy_train",
    "verify": "digin.tasks.verify",
    "index": "digin.tasks.index",
    "status": "digin.tasks.status",
    "doctor": "digin.tasks.doctor",
}
