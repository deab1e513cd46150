"""Files shipped with the package: the demo LOLNeRF model and the examples the app offers for it."""
