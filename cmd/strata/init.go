package main

import (
	"fmt"
	"os"

	"github.com/strata-fs/strata/runner"
)

// The hidden verb that "strata run" re-executes itself with, inside the
// container's new namespaces, to become the container's PID 1. It is not
// for people: its configuration arrives on inherited descriptors (see the
// runner package doc).
func init() {
	registerVerb(verb{
		name:    runner.InitVerb,
		summary: "(internal) PID 1 of a container started by strata run",
		run:     runInit,
	})
}

func runInit(args []string) error {
	if len(args) != 0 {
		return fmt.Errorf("%w: %s takes no arguments; it is started by strata run", errUsage, runner.InitVerb)
	}
	os.Exit(runner.Init())
	return nil
}
