"""LightningModules for the task models and the task registry that `train.py` reads."""
from .base import TaskModule
from .registry import Task, get_task, list_tasks, register_task

__all__ = ["Task", "TaskModule", "get_task", "list_tasks", "register_task"]
