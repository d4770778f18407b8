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
	name := agentbin.Name(arch)
	if explicit != "" {
		b, err := os.ReadFile(filepath.Join(explicit, name))
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("no %s in %s (agent.dir, --vmagent-dir or MESHVM_AGENT_DIR): run make build and point it at the checkout's bin/, or leave it unset to use the agent built into hostctl", name, explicit)
		}
		return b, err
	}
	if b, ok := embedded(arch); ok {
		return b, nil
	}
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, name))
		if err == nil || !errors.Is(err, fs.ErrNotExist) {
			return b, err
		}
	}
	return nil, fmt.Errorf("no %s: this hostctl was built without the agents and none is in %s: build hostctl with make build (it embeds them), or give a directory holding %s with --vmagent-dir",
		name, strings.Join(dirs, ", "), name)
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
