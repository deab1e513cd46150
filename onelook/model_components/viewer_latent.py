"""Which latent the nerfstudio viewer shows of a LOLNeRF model (`ns-train lolnerf --vis viewer`).

The viewer renders cameras that belong to no training image. These controls, in the viewer's panel, choose
their latent: a training image's code (by index) or the table's mean, and a truncation that pulls the code
towards the mean (1 = the code itself, 0 = the mean), as sampling does.
"""

from __future__ import annotations

from nerfstudio.viewer.viewer_elements import ViewerControl, ViewerDropdown, ViewerSlider
from torch import Tensor, nn

from onelook.field_components.latent_table import LatentTable

TRAINING_IMAGE, MEAN = "training image", "mean"


class ViewerLatent(nn.Module):
    """The viewer's latent controls (an nn.Module so that nerfstudio's viewer finds them on the model)."""

    def __init__(self, num_latents: int):
        super().__init__()
        self.viewer_control = ViewerControl()  # the viewer hands itself to it: a change re-renders the view

        def rerender(_) -> None:
            viewer = getattr(self.viewer_control, "viewer", None)
            if viewer is not None:
                viewer._trigger_rerender()  # what the viewer's own controls call

        self.source = ViewerDropdown(
            "Latent", TRAINING_IMAGE, [TRAINING_IMAGE, MEAN], cb_hook=rerender, hint="whose latent to show"
        )
        self.image = ViewerSlider(
            "Training image", 0, 0, max(num_latents - 1, 1), 1, cb_hook=rerender, hint="the image's index"
        )
        self.truncation = ViewerSlider(
            "Truncation", 1.0, 0.0, 1.0, 0.05, cb_hook=rerender, hint="0: the mean, 1: the training image's code"
        )

    def latent(self, table: LatentTable) -> Tensor:
        """(latent_dim,) the code the controls choose."""
        mean = table.mean()
        if self.source.value == MEAN:
            return mean
        index = min(max(int(self.image.value), 0), table.embedding.num_embeddings - 1)
        return mean + float(self.truncation.value) * (table.embedding.weight[index] - mean)
