"""Prediction: whole-scene inference, city products, vectorisation and evaluation."""
