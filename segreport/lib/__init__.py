"""The libraries: loading and encoding data, validity and stability metrics, the verdict and the recommendation, SHAP explanations, projections, personas, drift, ECOD outliers, the demo data."""
