"""The one exception type the course raises for bad input or a wrong setting."""


class CourseError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""
