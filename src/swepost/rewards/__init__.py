"""Rewards and graders: plain functions shared by collect, filter, rl and eval."""
