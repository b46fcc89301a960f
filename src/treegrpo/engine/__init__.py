"""The engine: grow trees with batched model calls (``rollout``), re-score edges one forward per
parent (``minibatches``), one iteration's advantages and update (``update``), the presets (``methods``).
It knows neither the model family nor the process layout."""
