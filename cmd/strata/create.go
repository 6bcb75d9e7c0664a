package main

import (
	"fmt"

	"github.com/strata-fs/strata/layerdb"
)

func init() {
	registerVerb(verb{name: "create", summary: "create a container from an image", run: runCreate})
}

func runCreate(args []string) error {
	fs := newFlagSet("create", "IMAGE [--name NAME]")
	sf := addStoreFlags(fs)
	name := fs.String("name", "", "container name (default: the ID's first 12 digits)")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	return withStore(sf.root, func(s *layerdb.Store) error {
		c, err := s.CreateContainer(pos[0], *name)
		if err == nil {
			fmt.Println(c.ID)
		}
		return err
	})
}
