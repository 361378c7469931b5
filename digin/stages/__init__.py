"""The stage layer: the library code the tasks share, below `digin/tasks/` (thin configs + calls) and above the
engine and the shards. Configs (args), run preparation (models), start noise and fixed-shape chunks (batching),
per-sample result fields (results), work lists, UVCE pair tables (pairs), the img2img edit process (edits) and the
bodies of the tasks (one module per task: its process, batching and per-sample record building; or one
package: gallery/ for `digin gallery` and `digin figure`, neurons/ for `digin neurons`)."""
