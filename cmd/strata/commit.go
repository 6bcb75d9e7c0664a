package main

import (
	"fmt"

	"github.com/strata-fs/strata/layerdb"
)

func init() {
	registerVerb(verb{name: "commit", summary: "make a new image from a container's changes", run: runCommit})
}

func runCommit(args []string) error {
	fs := newFlagSet("commit", "CONTAINER [NAME[:TAG]] [-m MESSAGE] [--author A]")
	sf := addStoreFlags(fs)
	sf.addQuiet(fs)
	msg := fs.StringP("message", "m", "", "commit message (the history comment)")
	author := fs.StringP("author", "a", "", "author of the new image")
	pos, err := parseArgs(fs, args, 1, 2)
	if err != nil {
		return err
	}
	name := ""
	if len(pos) == 2 {
		name = pos[1]
	}
	im, err := layerdb.Commit(sf.root, pos[0], name, layerdb.CommitOptions{Message: *msg, Author: *author, Progress: sf.progress()})
	if err != nil {
		return err
	}
	fmt.Println(im.ID)
	return nil
}
