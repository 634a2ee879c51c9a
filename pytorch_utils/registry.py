"""A tiny name -> builder registry, shared by models and recipes."""
from typing import Callable, Dict, Generic, List, TypeVar

from pytorch_utils.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to builder callables; registering a name twice raises. ``kind`` ("model") names it in errors."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, Callable[..., T]] = {}

    def register(self, fn: Callable[..., T] = None, *, name: str = None):
        """Decorator: ``@reg.register`` or ``@reg.register(name="x")``; returns the function unchanged."""

        def wrap(f):
            key = name or f.__name__
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._items[key] = f
            return f

        return wrap(fn) if fn is not None else wrap

    def get(self, name: str) -> Callable[..., T]:
        """The builder registered as ``name``; raises UnknownNameError listing valid names."""
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(self.names())
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid {self.kind}s: {valid}") from None

    def names(self) -> List[str]:
        """Registered names, sorted."""
        return sorted(self._items)
