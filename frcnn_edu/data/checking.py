"""Finding every problem in a dataset at once, instead of one per run.

The readers stop at the first bad file when a dataset is built (so nothing is
ever trained on silently wrong data). Before a long run, `check_dataset`
lists *all* the problems, one string per bad file, each naming the file and
what is wrong with it; an empty list means every image decodes and every
annotation parses.
"""


def collect(problems, read, *args):
    """read(*args); if it raises ValueError, append the message to `problems` and return None."""
    try:
        return read(*args)
    except ValueError as err:
        problems.append(str(err))
        return None


def raise_problems(problems, lister):
    """ValueError with the first problem (and how many more there are), if there are any.

    lister: the call that lists them all, for the message (e.g. "check_voc('data/voc', 'train')").
    """
    if len(problems) == 1:
        raise ValueError(problems[0])
    if problems:
        more = len(problems) - 1
        raise ValueError(f"{problems[0]} (and {more} more problem{'s' * (more > 1)}: {lister} lists them all)")


def check_dataset(dataset):
    """Every problem in `dataset`, one string each; [] means all good.

    Uses `dataset.check()` where the dataset has one (VOCDataset, COCODataset and
    ShapesDataset do: every image decoded fully, every annotation parsed). Any other
    dataset is read item by item: every exception from `dataset[i]` is collected, and
    an (image, target) sample is also put through the model's own input checks (pixel
    range, target shapes and labels), so a sample the model would refuse is listed too.
    """
    if callable(getattr(dataset, "check", None)):
        return list(dataset.check())
    # Imported here: frcnn_edu.transform itself imports this package.
    from ..transform import check_images
    from .targets import validate_target

    name = type(dataset).__name__
    problems = []
    for i in range(len(dataset)):
        try:
            sample = dataset[i]
            if isinstance(sample, (tuple, list)) and len(sample) == 2:
                image, target = sample
                check_images([image])
                if isinstance(target, dict):
                    validate_target(target, tuple(image.shape[-2:]), index=i)
        except Exception as err:  # noqa: BLE001 - any dataset may raise anything; collect it
            problems.append(f"{name}[{i}]: {type(err).__name__}: {err}")
    return problems
