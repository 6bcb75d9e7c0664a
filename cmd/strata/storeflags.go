package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	flag "github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/strata-fs/strata/layerdb"
)

// storeFlags are the flags every store verb shares.
type storeFlags struct {
	root   string
	quiet  bool
	format string
}

// addStoreFlags registers --root (default: STRATA_ROOT or the uid-based
// default of layerdb.DefaultRoot) on fs.
func addStoreFlags(fs *flag.FlagSet) *storeFlags {
	sf := &storeFlags{}
	fs.StringVar(&sf.root, "root", layerdb.DefaultRoot(), "store root directory (env STRATA_ROOT)")
	return sf
}

// addQuiet registers --quiet for verbs that draw a progress bar.
func (sf *storeFlags) addQuiet(fs *flag.FlagSet) {
	fs.BoolVarP(&sf.quiet, "quiet", "q", false, "no progress bar")
}

// addFormat registers --format for listing verbs.
func (sf *storeFlags) addFormat(fs *flag.FlagSet) {
	fs.StringVar(&sf.format, "format", "table", "output format: table or json")
}

func (sf *storeFlags) json() (bool, error) {
	switch sf.format {
	case "", "table":
		return false, nil
	case "json":
		return true, nil
	}
	return false, fmt.Errorf("%w: --format must be table or json", errUsage)
}

// progress is a bar on stderr when it is a terminal and --quiet is off, and
// nil (silent) otherwise, so pipes and logs stay clean.
func (sf *storeFlags) progress() layerdb.Progress {
	if sf.quiet || !term.IsTerminal(int(os.Stderr.Fd())) {
		return nil
	}
	return &terminalBar{}
}

// terminalBar draws layerdb progress with schollz/progressbar.
type terminalBar struct{ bar *progressbar.ProgressBar }

func (t *terminalBar) Start(what string, total int64) {
	t.bar = progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionSetDescription(what),
		progressbar.OptionShowBytes(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish())
}

func (t *terminalBar) Add(n int64) {
	if t.bar != nil {
		t.bar.Add64(n)
	}
}

func (t *terminalBar) Finish() {
	if t.bar != nil {
		t.bar.Finish()
		t.bar = nil
	}
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// withStore opens the store, runs fn and closes it, so the store is locked
// only for fn's short work.
func withStore(root string, fn func(s *layerdb.Store) error) error {
	s, err := layerdb.Open(root)
	if err != nil {
		return err
	}
	err = fn(s)
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	return err
}

func parseArgs(fs *flag.FlagSet, args []string, min, max int) ([]string, error) {
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	n := fs.NArg()
	if n < min || (max >= 0 && n > max) {
		fs.Usage()
		return nil, fmt.Errorf("%w: %s takes %s", errUsage, fs.Name(), argCount(min, max))
	}
	return fs.Args(), nil
}

func argCount(min, max int) string {
	switch {
	case min == max:
		return fmt.Sprintf("%d argument(s)", min)
	case max < 0:
		return fmt.Sprintf("at least %d argument(s)", min)
	}
	return fmt.Sprintf("%d to %d arguments", min, max)
}
