"""The course: the assignment checkers, the gradient checker, nbgrader coursework and the
teaching notebooks."""
