"""The demo's starting model as a model class of its own: a Qwen2.5-VL (or Qwen3-VL) whose merged image tokens get a
learned 2-D position table added (the stand-in for a pretrained vision tower's positional features, see tiny.py).

This file is the model's code: the config's save_pretrained (vlm.save_hf) copies it into the checkpoint folder and
config.json's auto_map names its classes, so `AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)` (the stage scripts'
--trust-remote-code) builds the model with its table, and engine.Engine's copy (`type(model)(config)`) has it too,
like any other model. It imports only torch and transformers (transformers loads it on its own).
"""
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen3VLConfig
from transformers import Qwen3VLForConditionalGeneration

POSITION_TABLE = "image_position_table"   # config attribute (the table's side) and parameter name of model.model


def position_offsets(table: torch.Tensor, grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """table[r, c] for every merged image token (all images, raster order per image), r and c its row and column
    in its image's merged grid; rows and columns beyond the table's side share its last entry."""
    rows, cols = [], []
    for t, h, w in grid_thw.tolist():
        i = torch.arange(t * (h // merge) * (w // merge), device=table.device)
        rows.append((i // (w // merge)) % (h // merge))
        cols.append(i % (w // merge))
    side = table.shape[0] - 1
    return table[torch.cat(rows).clamp(max=side), torch.cat(cols).clamp(max=side)]


class _PositionTable:
    """model.model.image_position_table (side × side × hidden, a parameter: it trains with the language model,
    also when the vision tower is frozen), added to the vision tower's merged tokens by a forward hook."""

    def _add_position_table(self):
        side, hidden = self.config.image_position_table, self.config.get_text_config().hidden_size
        setattr(self.model, POSITION_TABLE, torch.nn.Parameter(torch.zeros(side, side, hidden)))
        self.model.visual.register_forward_hook(self._add_positions, with_kwargs=True)

    def _add_positions(self, visual, args, kwargs, out):
        grid = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]
        extra = position_offsets(getattr(self.model, POSITION_TABLE), grid, visual.spatial_merge_size)
        out.pooler_output = out.pooler_output + extra.to(out.pooler_output.dtype)
        return out


class PositionTableQwen2_5_VLConfig(Qwen2_5_VLConfig):
    model_type = "qwen2_5_vl_position_table"   # a type of its own: without trust_remote_code loading fails

    def __init__(self, image_position_table: int = 16, **kwargs):
        self.image_position_table = image_position_table
        super().__init__(**kwargs)


class PositionTableQwen2_5_VL(_PositionTable, Qwen2_5_VLForConditionalGeneration):
    config_class = PositionTableQwen2_5_VLConfig

    def __init__(self, config):
        super().__init__(config)
        self._add_position_table()


class PositionTableQwen3VLConfig(Qwen3VLConfig):
    model_type = "qwen3_vl_position_table"

    def __init__(self, image_position_table: int = 16, **kwargs):
        self.image_position_table = image_position_table
        super().__init__(**kwargs)


class PositionTableQwen3VL(_PositionTable, Qwen3VLForConditionalGeneration):
    config_class = PositionTableQwen3VLConfig

    def __init__(self, config):
        super().__init__(config)
        self._add_position_table()


CLASSES = {"qwen2_5_vl": PositionTableQwen2_5_VL, "qwen3_vl": PositionTableQwen3VL}
for _cls in CLASSES.values():   # config.save_pretrained copies this file and names the config class in auto_map
    _cls.config_class.register_for_auto_class()


def with_position_table(model, side: int, std: float = 0.1):
    """The same model (weights, attention set-up) as a position-table class; the table drawn from N(0, std²) with
    the global random state (the model's own construction leaves it untouched)."""
    cls = CLASSES[model.config.model_type]
    config = cls.config_class(image_position_table=side, **{k: v for k, v in model.config.to_dict().items()
                                                             if k != "model_type"})
    config._attn_implementation = model.config._attn_implementation
    config.auto_map = {"AutoModelForImageTextToText": f"{__name__.rpartition('.')[2]}.{cls.__name__}"}
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        new = cls(config)
    new.load_state_dict(model.state_dict(), strict=False, assign=True)
    new.tie_weights()                                             # assign=True gave lm_head a tensor of its own
    new.generation_config = model.generation_config
    table = torch.randn(side, side, config.get_text_config().hidden_size) * std
    setattr(new.model, POSITION_TABLE, torch.nn.Parameter(table.to(next(model.parameters()))))
    for name, buf in model.named_buffers():                       # rotary inv_freq: not in the state dict
        mod, _, leaf = name.rpartition(".")
        new.get_submodule(mod)._buffers[leaf] = buf
    return new.eval() if not model.training else new.train()
