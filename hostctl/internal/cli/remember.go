package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/statedir"
)

// siteChoice is what picks the site: --config, --provider and --kubeconfig.
// up remembers the choice it was given, so that a later command given none
// (after make lab, a bare "hostctl vm status") reaches the same site.
type siteChoice struct {
	Config     string `json:"config,omitempty"`
	Provider   string `json:"provider,omitempty"`
	Kubeconfig string `json:"kubeconfig,omitempty"`
}

// siteFile holds the remembered choice, in the state directory that
// commands given no choice use (.meshvm beside meshvm.yaml by default).
const siteFile = "site.json"

var siteFlags = []string{"config", "provider", "kubeconfig"}

// chosen says whether the command line or the environment picks the site.
func chosen(cmd *cobra.Command) bool {
	return chosenByFlags(cmd) || os.Getenv("MESHVM_PROVIDER") != "" || os.Getenv("MESHVM_KUBECONFIG") != ""
}

func chosenByFlags(cmd *cobra.Command) bool {
	for _, f := range siteFlags {
		if cmd.Flags().Changed(f) {
			return true
		}
	}
	return false
}

// defaultState is the state directory of the config loaded without a
// choice; create says to make it when it is missing.
func defaultState(create bool) (*statedir.Dir, error) {
	cfg, err := config.Load(config.DefaultFile, false, os.Getenv)
	if cfg.StateDir == "" {
		return nil, err
	}
	if _, err := os.Stat(cfg.StateDir); err != nil && !create {
		return nil, err
	}
	return statedir.Open(cfg.StateDir)
}

// choice is the site the flags pick, with absolute paths.
func (g *globals) choice(cmd *cobra.Command) (siteChoice, error) {
	c := siteChoice{Provider: g.provider, Kubeconfig: g.kubeconfig}
	var err error
	if cmd.Flags().Changed("config") || g.recalled {
		if c.Config, err = filepath.Abs(g.configPath); err != nil {
			return c, err
		}
	}
	if c.Kubeconfig != "" {
		c.Kubeconfig, err = filepath.Abs(c.Kubeconfig)
	}
	return c, err
}

// recall takes the site up was last given when the command picks none.
func (g *globals) recall(cmd *cobra.Command) error {
	if g.recallDone {
		return nil
	}
	g.recallDone = true
	if chosen(cmd) {
		return nil
	}
	state, err := defaultState(false)
	if err != nil {
		return nil // none kept, or the load that follows names what is wrong with the config
	}
	data, err := state.ReadFile(siteFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	var c siteChoice
	if err == nil {
		err = json.Unmarshal(data, &c)
	}
	if err != nil {
		return fmt.Errorf("the site hostctl up remembered in %s does not read (%w): delete the file, or pass --provider or --config", state.Path(siteFile), err)
	}
	if c.Config != "" {
		if _, err := os.Stat(c.Config); err != nil {
			return fmt.Errorf("hostctl up last ran with --config %s (remembered in %s), which is gone: pass --config, or delete %s", c.Config, state.Path(siteFile), state.Path(siteFile))
		}
		g.configPath, g.recalled = c.Config, true
	}
	g.provider, g.kubeconfig = c.Provider, c.Kubeconfig
	return nil
}

// remember keeps the site up was given for the commands that follow.
func (g *globals) remember(cmd *cobra.Command) error {
	if !chosenByFlags(cmd) {
		return nil
	}
	c, err := g.choice(cmd)
	if err != nil {
		return err
	}
	state, err := defaultState(true)
	if err != nil {
		return err
	}
	data, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return state.WriteSecret(siteFile, append(data, '\n'))
}

// forget drops the remembered site once down has removed it.
func (g *globals) forget(cmd *cobra.Command) error {
	state, err := defaultState(false)
	if err != nil {
		return nil
	}
	data, err := state.ReadFile(siteFile)
	if err != nil {
		return nil
	}
	var was siteChoice
	c, err := g.choice(cmd)
	if err != nil || json.Unmarshal(data, &was) != nil || was != c {
		return err // another site's: keep it
	}
	return os.Remove(state.Path(siteFile))
}
