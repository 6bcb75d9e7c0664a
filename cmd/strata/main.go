// Command strata is the command-line face of the strata union filesystem.
//
// Each verb lives in its own file and registers itself with registerVerb in
// an init function; main only dispatches. A verb parses its flags into an
// options struct and calls one package function, so the logic stays testable
// outside the CLI.
//
// strata also answers the mount-helper calling convention of mount.fuse3:
// "strata SOURCE MOUNTPOINT -o OPTIONS" is treated as "strata mount -o
// OPTIONS MOUNTPOINT".
package main

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	flag "github.com/spf13/pflag"
)

// verb is one subcommand.
type verb struct {
	name    string
	summary string
	// run gets the arguments after the verb name.
	run func(args []string) error
}

var verbs = map[string]verb{}

func registerVerb(v verb) {
	if _, dup := verbs[v.name]; dup {
		panic("verb registered twice: " + v.name)
	}
	verbs[v.name] = v
}

// errUsage marks an error the user caused by calling a verb wrongly; main
// prints it with a hint instead of as a failure of the work itself.
var errUsage = errors.New("usage")

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "strata: %v\n", err)
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		printUsage()
		return nil
	}
	v, ok := verbs[args[0]]
	if !ok {
		if mountArgs, isHelper := mountHelperArgs(args); isHelper {
			return verbs["mount"].run(mountArgs)
		}
		printUsage()
		return fmt.Errorf("%w: unknown command %q", errUsage, args[0])
	}
	return v.run(args[1:])
}

// mountHelperArgs recognises the mount.fuse3 convention
// "strata SOURCE MOUNTPOINT [-o OPTIONS]" and rewrites it to mount's flags.
func mountHelperArgs(args []string) ([]string, bool) {
	var positional, rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-o" && i+1 < len(args):
			rest = append(rest, "-o", args[i+1])
			i++
		case strings.HasPrefix(a, "-o") && len(a) > 2:
			rest = append(rest, "-o", a[2:])
		case strings.HasPrefix(a, "-"):
			rest = append(rest, a)
		default:
			positional = append(positional, a)
		}
	}
	if len(positional) != 2 || len(rest) == 0 {
		return nil, false
	}
	return append(rest, positional[1]), true
}

func printUsage() {
	names := make([]string, 0, len(verbs))
	for n := range verbs {
		if !strings.HasPrefix(n, "__") { // internal verbs the runner re-executes
			names = append(names, n)
		}
	}
	sort.Strings(names)
	fmt.Fprintln(os.Stderr, "strata: a union filesystem for container images\n\nUsage: strata COMMAND [OPTIONS]\n\nCommands:")
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", n, verbs[n].summary)
	}
}

// newFlagSet makes a flag set for a verb that reports errors instead of
// exiting, so run() stays the only exit path.
func newFlagSet(name, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SortFlags = false
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: strata %s %s\n", name, usage)
		fs.PrintDefaults()
	}
	return fs
}
