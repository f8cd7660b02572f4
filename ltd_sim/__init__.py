"""Trace-driven simulation layer of the LTD toolkit: tree arithmetic, traces, features, envs, policies.

This package is the bottom layer: it imports numpy, gymnasium, stable-baselines3 and simpy only.
"""
