"""Streamlit dashboard over run records (``streamlit run dashboards/app.py``).

Never imports torch: records are read through :mod:`records` only."""
