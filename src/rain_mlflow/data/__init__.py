"""Data: read a station CSV (or the embedded synthetic record), clean it, and turn it into training windows.

- `source.py`: `load_clean`, the record read and cleaned; `io.py`: CSV reading, atomic writes.
- `clean.py`: the cleaning rules; `missing.py`: the missing-value policy; `timing.py`: time settings in steps.
- `windows.py`: labels and window ends; `accounting.py`: what each split keeps; `dataset.py`: `prepare`, the
  scaled series and the splits a run trains on; `batches.py`: windows gathered on the training device.
"""
