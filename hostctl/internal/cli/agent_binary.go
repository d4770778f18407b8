package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/meshvm/meshvm/hostctl/internal/agentbin"
	"github.com/meshvm/meshvm/lab/build"
)

// agentBinary returns the lookup of the static vmagent that up installs:
// the one in dir (agent.dir, --vmagent-dir, MESHVM_AGENT_DIR) when given,
// else the one built into hostctl, else one beside the hostctl binary or in
// the checkout's bin/ (a hostctl built with plain go build, in development).
func agentBinary(dir string) func(arch string) ([]byte, error) {
	return func(arch string) ([]byte, error) {
		return findAgent(arch, dir, agentbin.Agent, agentDirsOnDisk())
	}
}

// findAgent is agentBinary's order, with the embedded agents and the
// directories searched after them as arguments.
func findAgent(arch, explicit string, embedded func(string) ([]byte, bool), dirs []string) ([]byte, error) {
	return builtIn{what: "agent", name: agentbin.Name, embedded: embedded, flag: "--vmagent-dir", flagDesc: "agent.dir, --vmagent-dir or MESHVM_AGENT_DIR"}.find(arch, explicit, dirs)
}

// builtIn is a static binary make build embeds in hostctl for each
// architecture (the agent, the controller), found in that order: a
// directory given, the embedded one, then one of dirs.
type builtIn struct {
	what     string
	name     func(arch string) string
	embedded func(arch string) ([]byte, bool)
	// flag names the directory's flag; flagDesc everything that sets it.
	flag, flagDesc string
}

func (b builtIn) find(arch, explicit string, dirs []string) ([]byte, error) {
	name := b.name(arch)
	if explicit != "" {
		data, err := os.ReadFile(filepath.Join(explicit, name))
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("no %s in %s (%s): run make build and point it at the checkout's bin/, or leave it unset to use the %s built into hostctl", name, explicit, b.flagDesc, b.what)
		}
		return data, err
	}
	if data, ok := b.embedded(arch); ok {
		return data, nil
	}
	for _, d := range dirs {
		data, err := os.ReadFile(filepath.Join(d, name))
		if err == nil || !errors.Is(err, fs.ErrNotExist) {
			return data, err
		}
	}
	return nil, fmt.Errorf("no %s: this hostctl was built without the %s and none is in %s: build hostctl with make build (it embeds it), or give a directory holding %s with %s",
		name, b.what, strings.Join(dirs, ", "), name, b.flag)
}

// agentDirsOnDisk are where make build leaves the agents: beside the hostctl
// binary, and the bin/ of the checkout the working directory is in.
func agentDirsOnDisk() []string {
	var dirs []string
	if exe, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Dir(exe))
	}
	if src, err := build.ModuleDir(); err == nil {
		dirs = append(dirs, filepath.Join(src, "..", "..", "bin"))
	}
	return dirs
}
