"""The dashboard's pages: one module per page, each with ``render(ctx)``."""
from dashboards.views import compare, estimators, exploration, prompts, runs, training

PAGES = {
    "Runs": runs.render,
    "Training": training.render,
    "Prompts": prompts.render,
    "Exploration": exploration.render,
    "Estimators": estimators.render,
    "Compare": compare.render,
}
