"""Per-round TensorBoard scalars (``output.tensorboard = true``); TensorBoard is an optional extra."""
from .errors import ConfigError

__all__ = ["TensorBoardLog", "SCALARS"]

#: Tag -> how it is computed from a metrics row (None values are skipped).
SCALARS = {
    "loss/train": lambda r: r["train_loss"],
    "loss/test": lambda r: r["test_loss"],
    "accuracy/test": lambda r: r["test_acc"],
    "bytes/up": lambda r: r["up_bytes"],
    "bytes/down": lambda r: r["down_bytes"],
    "bytes/total_MB": lambda r: (r["total_up"] + r["total_down"]) / 1e6,
    "compression/overall": lambda r: r["compression"],
    "lr": lambda r: r["lr"],
}


class TensorBoardLog:
    """Writes each round's metrics row as scalars to an event file in ``log_dir``.

    Parameters
    ----------
    log_dir : str or Path
        Folder of the event files (a run's ``tensorboard/`` folder).

    Raises
    ------
    ConfigError
        TensorBoard is not installed (the message says what to install).
    """

    def __init__(self, log_dir):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch's wrapper needs the separate `tensorboard` package
            raise ConfigError(f"output.tensorboard = true needs the tensorboard package ({exc}); install it "
                              f"with: pip install 'sketchgrad[tensorboard]', or set output.tensorboard = false"
                              ) from None
        self._writer = SummaryWriter(log_dir=str(log_dir))

    def add_row(self, row):
        """Log one metrics row at step ``row["round"]``."""
        for tag, get in SCALARS.items():
            value = get(row)
            if value is not None:
                self._writer.add_scalar(tag, value, row["round"])

    def close(self):
        """Flush and close the event file."""
        self._writer.close()
