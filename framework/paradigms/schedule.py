"""The experience schedule: which tasks train at which epoch, and the experience boundaries where
strategies and experience callbacks are called (:mod:`framework.strategies`)."""
from __future__ import annotations

from typing import List


from framework.core.seeding import seed_epoch

__all__ = ["ScheduleMixin"]


class ScheduleMixin:
    """Experiences and epochs (a part of :class:`~framework.paradigms.base.MedCLModule`)."""

    def experiences(self) -> List[List[str]]:
        """Task names trained in each experience, in order: all tasks at once by default."""
        return [list(self.stream_specs or self.task_specs)]

    def epochs_per_experience(self) -> int:
        return max(int(self.trainer.max_epochs or 1), 1)

    def future_tasks(self, experience: int) -> List[str]:
        """Tasks with a head that are first trained after ``experience`` (only under DDP, see :meth:`_prepare_ddp`)."""
        earlier = {t for tasks in self.experiences()[: experience + 1] for t in tasks}
        return [t for tasks in self.experiences()[experience + 1 :] for t in tasks if t not in earlier and t in self.task_specs]

    def validate_schedule(self) -> None:
        """Check trainer settings against the paradigm's schedule (override to add checks)."""

    def experience_of_epoch(self, epoch: int) -> int:
        return min(epoch // self.epochs_per_experience(), len(self.experiences()) - 1)

    def tasks_for_epoch(self, epoch: int) -> List[str]:
        """Tasks whose training data the stream serves at ``epoch``."""
        return list(self.experiences()[self.experience_of_epoch(epoch)])

    def tasks_for_evaluation(self) -> List[str]:
        """Tasks the model can be tested on: those it has heads for."""
        return list(self.task_specs)

    # ------------------------------------------------------------------ experience boundaries
    def on_train_epoch_start(self) -> None:
        epoch = self.current_epoch
        seed_epoch(epoch)  # exact resume, and no dependence on later domains (framework/core/seeding.py)
        experience = self.experience_of_epoch(epoch)
        tasks = self.experiences()[experience]
        starting = epoch == experience * self.epochs_per_experience()
        if starting:
            self.ensure_tasks(tasks)
        # the first epoch of this process inside an experience: a run resumed there restores what the
        # experience's start set up (the freezing policy freezes what the original run froze)
        resumed = not starting and self._experience_started != experience
        self._experience_started = experience
        if starting or resumed:
            self.strategy_runner.experience_hook("before_experience", experience, tasks)

    def is_last_epoch_of_experience(self, epoch: int) -> bool:
        """Whether ``epoch`` ends its experience (or the run)."""
        return (epoch + 1) % self.epochs_per_experience() == 0 or epoch + 1 >= (self.trainer.max_epochs or 0)

    def on_train_epoch_end(self) -> None:
        epoch = self.current_epoch
        experience = self.experience_of_epoch(epoch)
        if self.is_last_epoch_of_experience(epoch):
            self.strategy_runner.experience_hook("after_experience", experience, self.experiences()[experience])
