package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/dustin/go-humanize"

	"github.com/strata-fs/strata/layerdb"
)

func init() {
	registerVerb(verb{name: "df", summary: "show space used by images and layers, shared and unique", run: runDf})
}

func runDf(args []string) error {
	fs := newFlagSet("df", "")
	sf := addStoreFlags(fs)
	sf.addFormat(fs)
	if _, err := parseArgs(fs, args, 0, 0); err != nil {
		return err
	}
	asJSON, err := sf.json()
	if err != nil {
		return err
	}
	var u *layerdb.Usage
	err = withStore(sf.root, func(s *layerdb.Store) error {
		u, err = s.DiskUsage()
		return err
	})
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(u)
	}
	b := func(n int64) string { return humanize.Bytes(uint64(n)) }
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 3, ' ', 0)
	fmt.Fprintln(w, "IMAGE ID\tNAMES\tSIZE\tSHARED\tUNIQUE")
	for _, im := range u.Images {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", short(im.ID.String()), strings.Join(im.Names, ","), b(im.Size), b(im.Shared), b(im.Unique))
	}
	w.Flush()
	fmt.Printf("\n%d layers hold %s; %d images total %s without sharing; %d containers\n",
		u.Layers, b(u.LayersSize), len(u.Images), b(u.ImagesSize), u.Containers)
	return nil
}
