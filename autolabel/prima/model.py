"""PrimaModel: vision tower -> SQuARE -> LLM with [SEG]/[REJ] -> pointer + projection -> SAM decoder.

The prompt lists "Image 1: <image>*Q" .. "Image N: <image>*Q" and then the turns
("Question: ...\\nAnswer: ..."); each image's Q placeholder embeddings are replaced by its SQuARE
tokens. The last-layer state of each `[SEG]` goes (a) through a pointer head that scores the
group's images (which image the mask is on is learned, not parsed from text) and (b) through
Linear-ReLU-Linear into one SAM prompt token decoded on that image. Earlier rounds' masks re-enter
later questions as `<mem>` tokens (mask-pooled tower features, SegLLM's mask memory); boxes or
points given with a question enter as `<ref>` tokens (SAM's prompt encoder, projected: UniPixel).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autolabel.prima.config import IMAGE, MEMORY, REFER, REJ, SEG, SPECIAL_TOKENS, PrimaConfig
from autolabel.prima.sam_decoder import SamMaskDecoder
from autolabel.prima.square import SQuARE
from autolabel.prima.vision import VisionTower

WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"  # beside config.json, whose model_type transformers does not know
IGNORE = -100


@dataclass
class Target:
    """What one `[SEG]` (a mask on `image`) or `[REJ]` (mask None, image None) stands for."""

    image: int | None
    mask: np.ndarray | None


@dataclass
class Turn:
    question: str
    answer: str | None = None  # given when training (teacher forcing)
    targets: list[Target] = field(default_factory=list)  # one per [SEG]/[REJ] of the answer, in order
    refs: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (image, xyxy box) per <ref> in the question


@dataclass
class Example:
    """One group and its conversation: the unit of training and of inference."""

    images: list[np.ndarray]
    turns: list[Turn]


@dataclass
class Grounded:
    """A `[SEG]` or `[REJ]` of a generated answer, with the phrase written before it."""

    phrase: str
    image: int | None = None  # None for [REJ]
    mask: np.ndarray | None = None
    score: float = 0.0


@dataclass
class GeneratedTurn:
    answer: str
    grounded: list[Grounded]


@dataclass
class _Encoded:
    """Per-group image work, done once: visual tokens for the LLM, SAM embeddings, tower patches."""

    visual: torch.Tensor  # (N, Q, H)
    sam: torch.Tensor  # (N, C, h, w)
    sam_sizes: list[tuple[int, int]]
    patches: torch.Tensor  # (N, P, D)


@dataclass
class _Chat:
    """One group's conversation while it is being generated."""

    example: Example
    encoded: _Encoded
    ids: list[int]
    memory_images: list[int] = field(default_factory=list)
    memory_tokens: list[torch.Tensor] = field(default_factory=list)
    refs: list[torch.Tensor] = field(default_factory=list)
    results: list[GeneratedTurn] = field(default_factory=list)


class PrimaModel(nn.Module):
    def __init__(self, config: PrimaConfig, tokenizer, llm: nn.Module | None = None,
                 vision: VisionTower | None = None, sam: SamMaskDecoder | None = None):
        super().__init__()
        from transformers import AutoConfig, AutoModelForCausalLM

        self.config = config
        self.tokenizer = tokenizer
        self.vision = vision or VisionTower(config.vision, config.image_mean, config.image_std)
        self.llm = llm or AutoModelForCausalLM.from_config(AutoConfig.for_model(**config.llm))
        hidden = self.llm.config.get_text_config().hidden_size
        dim = self.vision.hidden_size
        self.sam = sam or SamMaskDecoder(config.sam)
        prompt_dim = self.sam.prompt_dim
        self.square = SQuARE(config.square, dim, hidden)
        self.visual_projection = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.seg_projection = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, prompt_dim))
        self.pointer_query, self.pointer_key = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.memory_projection = nn.Linear(dim, hidden)
        self.refer_projection = nn.Linear(2 * prompt_dim, hidden)
        self.ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}

    # -- prompt building ----------------------------------------------------------------------
    def _tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _prefix(self, n_images: int) -> list[int]:
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        q = self.config.square.num_image_queries
        return bos + [t for k in range(n_images) for t in self._tokens(f"Image {k + 1}: ") + [self.ids[IMAGE]] * q
                      + self._tokens("\n")]

    def _question(self, turn: Turn, memory: list[int]) -> list[int]:
        """The question, after a line naming earlier rounds' masks (one <mem> each) when there are any."""
        ids = self._tokens("Question: ")
        if memory:
            ids += self._tokens("Earlier masks:")
            for image in memory:
                ids += self._tokens(f" Image {image + 1} ") + [self.ids[MEMORY]]
            ids += self._tokens(".\n")
        return ids + self._tokens(turn.question) + self._tokens("\nAnswer: ")

    def _answer(self, text: str) -> list[int]:
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        return self._tokens(text) + eos + self._tokens("\n")

    # -- image work -----------------------------------------------------------------------------
    def encode(self, images: list[np.ndarray], question: str) -> _Encoded:
        patches = self.vision(images)
        text = self.llm.get_input_embeddings()(torch.tensor(self._tokens(question) or [self.ids[IMAGE]],
                                                            device=patches.device))
        visual = self.visual_projection(self.square(patches.to(text.dtype), text))
        sam_embeddings, sizes = self.sam.encode(images)
        return _Encoded(visual, sam_embeddings, sizes, patches)

    def _memory_token(self, encoded: _Encoded, image: int, mask: np.ndarray) -> torch.Tensor:
        """A mask as one LLM token: the tower's patch features averaged under the mask."""
        grid = self.vision.grid
        m = torch.as_tensor(mask, dtype=torch.float32, device=encoded.patches.device)[None, None]
        weights = nn.functional.adaptive_avg_pool2d(m, grid).flatten()
        pooled = (encoded.patches[image] * weights[:, None]).sum(0) / weights.sum().clamp(min=1e-6)
        return self.memory_projection(pooled.to(self.memory_projection.weight.dtype))

    def _embed(self, ids: list[int], encoded: _Encoded, memories: list[torch.Tensor],
               refs: list[torch.Tensor]) -> torch.Tensor:
        """Token embeddings with <image>, <mem> and <ref> placeholders replaced, in order."""
        ids_t = torch.tensor(ids, device=encoded.visual.device)
        embeds = self.llm.get_input_embeddings()(ids_t).clone()
        for token, values in ((IMAGE, encoded.visual.reshape(-1, encoded.visual.shape[-1])), (MEMORY, memories),
                              (REFER, refs)):
            where = (ids_t == self.ids[token]).nonzero().flatten()
            if len(where):
                stacked = values if isinstance(values, torch.Tensor) else torch.stack(values)
                if len(stacked) != len(where):
                    raise ValueError(f"{len(where)} {token} tokens but {len(stacked)} values for them")
                embeds[where] = stacked.to(embeds.dtype)
        return embeds

    def _ref_tokens(self, example: Example, turn: Turn) -> list[torch.Tensor]:
        tokens = []
        for image, box in turn.refs:
            size = example.images[image].shape[:2]
            tokens.append(self.refer_projection(self.sam.box_tokens(np.asarray(box, dtype=np.float32)[None], size)[0]))
        return tokens

    def _pointer(self, states: torch.Tensor, encoded: _Encoded) -> torch.Tensor:
        """[SEG] states (K, H) -> logits over the group's images (K, N)."""
        keys = self.pointer_key(encoded.visual.mean(1))
        return self.pointer_query(states) @ keys.T / keys.shape[-1] ** 0.5

    # -- training ---------------------------------------------------------------------------------
    def forward(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        """Teacher-forced losses over a batch: LM cross-entropy, mask BCE + Dice, pointer CE."""
        rows, labels, seg_info = [], [], []
        for b, example in enumerate(examples):
            encoded = self.encode(example.images, example.turns[0].question)
            ids = self._prefix(len(example.images))
            lab = [IGNORE] * len(ids)
            memory_images, memory_tokens, shown = [], [], 0
            for turn in example.turns:
                q, shown = self._question(turn, memory_images), len(memory_images)
                a = self._answer(turn.answer or "")
                start = len(ids) + len(q)
                ids, lab = ids + q + a, lab + [IGNORE] * len(q) + a
                specials = [i for i, t in enumerate(a) if t in (self.ids[SEG], self.ids[REJ])]
                if len(specials) != len(turn.targets):
                    raise ValueError(f"answer {turn.answer!r} has {len(specials)} [SEG]/[REJ] but "
                                     f"{len(turn.targets)} targets")
                for offset, target in zip(specials, turn.targets):
                    if a[offset] == self.ids[SEG]:
                        seg_info.append((b, start + offset, target, encoded))
                        memory_images.append(target.image)
                        memory_tokens.append(self._memory_token(encoded, target.image, target.mask))
            refs = [t for turn in example.turns for t in self._ref_tokens(example, turn)]
            rows.append(self._embed(ids, encoded, memory_tokens[:shown], refs))
            labels.append(lab)
        embeds, attention = _pad(rows)
        label_t = torch.full_like(attention, IGNORE)  # padded positions are ignored by the loss
        for b, lab in enumerate(labels):
            label_t[b, :len(lab)] = torch.tensor(lab, device=label_t.device)
        out = self.llm(inputs_embeds=embeds, attention_mask=attention, labels=label_t, output_hidden_states=True)
        losses = {"lm": out.loss}
        hidden = out.hidden_states[-1]
        pointer, bce, dice = [], [], []
        for b, position, target, encoded in seg_info:
            state = hidden[b, position]
            logits = self._pointer(state[None], encoded)
            pointer.append(nn.functional.cross_entropy(logits, torch.tensor([target.image], device=logits.device)))
            prompt = self.seg_projection(state[None])
            low_res, _ = self.sam.decode(encoded.sam[target.image:target.image + 1], prompt.to(encoded.sam.dtype))
            goal = self.sam.target(target.mask, encoded.sam_sizes[target.image])
            bce.append(nn.functional.binary_cross_entropy_with_logits(low_res[0], goal))
            dice.append(_dice(low_res[0], goal))
        zero = out.loss.new_zeros(())
        losses["pointer"] = torch.stack(pointer).mean() if pointer else zero
        losses["mask_bce"] = torch.stack(bce).mean() if bce else zero
        losses["mask_dice"] = torch.stack(dice).mean() if dice else zero
        losses["loss"] = losses["lm"] + losses["pointer"] + 2.0 * losses["mask_bce"] + 0.5 * losses["mask_dice"]
        return losses

    # -- inference --------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, example: Example, max_new_tokens: int = 256) -> list[GeneratedTurn]:
        """Greedy answers turn by turn; each [SEG] becomes a mask on the image the pointer picks."""
        return self.generate_batch([example], max_new_tokens)[0]

    @torch.no_grad()
    def generate_batch(self, examples: list[Example], max_new_tokens: int = 256) -> list[list[GeneratedTurn]]:
        """`generate` for several groups at once: one left-padded `generate` call per turn index."""
        chats = [_Chat(example, self.encode(example.images, example.turns[0].question),
                       self._prefix(len(example.images))) for example in examples]
        for t in range(max(len(example.turns) for example in examples)):
            active = [chat for chat in chats if t < len(chat.example.turns)]
            rows = []
            for chat in active:
                turn = chat.example.turns[t]
                chat.ids += self._question(turn, chat.memory_images)
                chat.refs += self._ref_tokens(chat.example, turn)
                rows.append(self._embed(chat.ids, chat.encoded, chat.memory_tokens, chat.refs))
            embeds, attention = _pad(rows, left=True)
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
            generated = self.llm.generate(inputs_embeds=embeds, attention_mask=attention, max_new_tokens=max_new_tokens,
                                          do_sample=False, eos_token_id=self.tokenizer.eos_token_id, pad_token_id=pad)
            for chat, new in zip(active, generated.tolist()):
                if self.tokenizer.eos_token_id in new:
                    new = new[:new.index(self.tokenizer.eos_token_id)]
                self._finish_turn(chat, new)
        return [chat.results for chat in chats]

    def _finish_turn(self, chat: _Chat, new: list[int]) -> None:
        """Ground the new answer on the group's images and carry its masks into the next turn."""
        full = chat.ids + new
        hidden = self.llm(inputs_embeds=self._embed(full, chat.encoded, chat.memory_tokens, chat.refs)[None],
                          output_hidden_states=True).hidden_states[-1][0]
        grounded = self._ground(new, hidden[len(chat.ids):], chat.encoded, chat.example)
        for g in grounded:
            if g.mask is not None:
                chat.memory_images.append(g.image)
                chat.memory_tokens.append(self._memory_token(chat.encoded, g.image, g.mask))
        chat.results.append(GeneratedTurn(self.tokenizer.decode(new, skip_special_tokens=False).strip(), grounded))
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        chat.ids = full + eos + self._tokens("\n")

    def _ground(self, new: list[int], states: torch.Tensor, encoded: _Encoded, example: Example) -> list[Grounded]:
        grounded, text_start = [], 0
        for position, token in enumerate(new):
            if token not in (self.ids[SEG], self.ids[REJ]):
                continue
            phrase = _phrase(self.tokenizer.decode(new[text_start:position], skip_special_tokens=True))
            text_start = position + 1
            if token == self.ids[REJ]:
                grounded.append(Grounded(phrase))
                continue
            state = states[position][None]
            probabilities = self._pointer(state, encoded).softmax(-1)[0]
            image = int(probabilities.argmax())
            low_res, _ = self.sam.decode(encoded.sam[image:image + 1], self.seg_projection(state).to(encoded.sam.dtype))
            logits = self.sam.to_image(low_res, encoded.sam_sizes[image], example.images[image].shape[:2])[0]
            mask = logits > 0
            # SAM's IoU head is not trained here: the score is the pointer's confidence in the image
            # times the decoder's mean confidence inside the mask
            inside = float(logits.sigmoid()[mask].mean()) if mask.any() else 0.0
            grounded.append(Grounded(phrase, image, mask.cpu().numpy(), float(probabilities[image]) * inside))
        return grounded

    # -- save / load --------------------------------------------------------------------------------
    def save_pretrained(self, directory: Path, *, merge_lora: bool = True) -> None:
        """config.json, model.safetensors and tokenizer/. Merging folds LoRA in for good."""
        from safetensors.torch import save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        lora = self.config.lora
        if is_peft(self.llm) and merge_lora:
            self.llm = self.llm.merge_and_unload()
            lora = lora.model_copy(update={"merged": True})
        elif is_peft(self.llm):
            lora = lora.model_copy(update={"merged": False})
        self.config = self.config.model_copy(update={"lora": lora})
        self.config.save(directory)
        self.tokenizer.save_pretrained(directory / TOKENIZER_DIR)
        save_model(self, str(directory / WEIGHTS_FILE))

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32
                        ) -> PrimaModel:
        """A checkpoint directory written by `save_pretrained` (safetensors only: no code runs)."""
        from safetensors.torch import load_model
        from transformers import AutoTokenizer

        from autolabel.errors import AutolabelError

        directory = Path(directory)
        config = PrimaConfig.load(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory / TOKENIZER_DIR)
        model = cls(config, tokenizer)
        if not config.lora.merged:
            model.llm = wrap_lora(model.llm, config, model.ids)
        try:
            load_model(model, str(directory / WEIGHTS_FILE), strict=True, device="cpu")
        except FileNotFoundError:
            raise AutolabelError(f"{directory}: no {WEIGHTS_FILE}") from None
        except RuntimeError as e:
            raise AutolabelError(f"{directory / WEIGHTS_FILE} does not fit its config.json: "
                                 f"{str(e).splitlines()[0]}") from None
        model = model.to(device=device, dtype=dtype)
        model.sam.float()  # segment-anything's prompt encoder mixes float32 in; SAM is small beside the LLM
        return model.eval()


def is_peft(module: nn.Module) -> bool:
    return hasattr(module, "peft_config")


def wrap_lora(llm: nn.Module, config: PrimaConfig, ids: dict[str, int]) -> nn.Module:
    """LoRA on the LLM; the new tokens' embedding rows (and an untied output head) train in full."""
    from peft import LoraConfig, get_peft_model

    tied = llm.get_output_embeddings() is None or \
        llm.get_output_embeddings().weight.data_ptr() == llm.get_input_embeddings().weight.data_ptr()
    head = [name for name, module in llm.named_modules() if module is llm.get_output_embeddings()]
    spec = config.lora
    return get_peft_model(llm, LoraConfig(
        r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=spec.target_modules,
        trainable_token_indices=sorted(ids.values()), modules_to_save=None if tied else head[-1:]))


def _pad(rows: list[torch.Tensor], *, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of embedding rows padded to one length, and its attention mask.

    Training pads on the right; generation pads on the left, so the new tokens line up.
    """
    longest = max(len(r) for r in rows)
    embeds = rows[0].new_zeros(len(rows), longest, rows[0].shape[-1])
    attention = torch.zeros(len(rows), longest, dtype=torch.long, device=rows[0].device)
    for b, row in enumerate(rows):
        span = slice(longest - len(row), longest) if left else slice(0, len(row))
        embeds[b, span] = row
        attention[b, span] = 1
    return embeds, attention


def _dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = logits.sigmoid().flatten()
    t = target.flatten()
    return 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)


def _phrase(text: str) -> str:
    """The words right before a [SEG]/[REJ]: after the last comma, colon or sentence end."""
    return re.split(r"[,:;.\n]", text)[-1].strip()
