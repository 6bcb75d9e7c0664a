package runner

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
)

// The generated files live in the container's state directory under these
// names and are bind-mounted over the same paths below /etc in the view.
var etcFileNames = []string{"hosts", "hostname", "resolv.conf"}

// writeEtcFiles writes hosts, hostname and resolv.conf for this run into
// stateDir (atomically, so a concurrent reader never sees half a file) and
// returns the bind mounts that put them over the view's /etc placeholders.
func writeEtcFiles(stateDir, hostname string, network Network) ([]bindMount, error) {
	resolv, err := resolvConf(network)
	if err != nil {
		return nil, err
	}
	contents := map[string][]byte{
		"hosts":       hostsFile(hostname),
		"hostname":    []byte(hostname + "\n"),
		"resolv.conf": resolv,
	}
	var mounts []bindMount
	for _, name := range etcFileNames {
		hostPath := filepath.Join(stateDir, name)
		if err := writeFileAtomically(hostPath, contents[name]); err != nil {
			return nil, err
		}
		mounts = append(mounts, bindMount{Source: hostPath, Target: "/etc/" + name, Optional: true})
	}
	return mounts, nil
}

// hostsFile is the usual Debian /etc/hosts with the container's own name on
// 127.0.1.1, so "hostname -f" and sudo-like tools resolve it.
func hostsFile(hostname string) []byte {
	var b bytes.Buffer
	b.WriteString("127.0.0.1\tlocalhost\n")
	if hostname != "" && hostname != "localhost" {
		fmt.Fprintf(&b, "127.0.1.1\t%s\n", hostname)
	}
	b.WriteString("::1\tlocalhost ip6-localhost ip6-loopback\n")
	b.WriteString("ff02::1\tip6-allnodes\n")
	b.WriteString("ff02::2\tip6-allrouters\n")
	return b.Bytes()
}

// resolvConf is the host's /etc/resolv.conf for the host network (same
// namespace, so even a 127.0.0.53 stub resolver is reachable), and a file
// with no name servers for --network none.
func resolvConf(network Network) ([]byte, error) {
	if network == NetworkNone {
		return []byte("# strata: --network none, no name servers\n"), nil
	}
	data, err := os.ReadFile("/etc/resolv.conf")
	if os.IsNotExist(err) {
		return []byte("# strata: the host has no /etc/resolv.conf\n"), nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the host's resolv.conf: %w", err)
	}
	return data, nil
}

func writeFileAtomically(name string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	return nil
}
