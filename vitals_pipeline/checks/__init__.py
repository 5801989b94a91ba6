"""Data quality: the rules (rules.py), their thresholds in one place (thresholds.py), the
per-point, per-partition quality of a window (quality.py) and the asset checks of
`<site>/timeseries` (specs.py). README "Data quality" says what each check means."""
