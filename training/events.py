"""TensorBoard event files of a resumed run: the steps past its checkpoint are dropped."""

import functools
from fileio import atomic
from pathlib import Path

import tensorflow as tf



def drop_events_after(folder, step):
    """Remove the TensorBoard events past `step` from `folder`, so that a run resumed at `step` does not draw
    the steps that its killed or diverged predecessor logged after its last checkpoint a second time.

    The rewritten files' temporaries lie in the folder above, which TensorBoard does not read.
    """
    folder = Path(folder)
    for path in folder.glob("events.out.tfevents.*"):
        atomic.remove_stale_temporaries(folder.parent / path.name)
        atomic.remove_stale_temporaries(path)  # where earlier versions put them
        records, complete = _read_records(path)
        kept = [record for record in records if tf.compat.v1.Event.FromString(record).step <= step]
        if len(kept) < len(records) or not complete:
            atomic.atomic_write(path, functools.partial(_write_records, kept), temporary_folder=folder.parent)


def _read_records(path):
    """(the records of a TFRecord file, False if its last record was cut short, as by a kill)."""
    records = []
    try:
        for record in tf.data.TFRecordDataset(str(path)):
            records.append(record.numpy())
    except tf.errors.DataLossError:
        return records, False
    return records, True


def _write_records(records, path):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
