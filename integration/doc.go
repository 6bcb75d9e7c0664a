// Package integration holds strata's end-to-end tests; see doc in progress.
package integration
