"""The one exception type the course raises for bad input or a wrong setting, and the exit statuses it ends with."""


class CourseError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


# Exit statuses of the command line: a refusal (its one sentence said) and Ctrl-C (the shell's, for SIGINT).
REFUSED, INTERRUPTED = 2, 130
