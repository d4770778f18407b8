package fleet

import (
	"context"
	"strings"
	"testing"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/statedir"
)

// cluster status asks the site for the processes it runs instead of
// type-asserting the lab: a cluster of yours runs its own (the lab's are
// lab/site's test).
func TestClusterProcessesComeFromTheSite(t *testing.T) {
	state, err := statedir.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var yours Site = &clusterSite{cfg: config.Default(), state: state}
	if got := yours.Processes(); got != nil {
		t.Errorf("cluster of yours: got %+v, want none", got)
	}
}

// A program that brings no lab refuses a config naming it, saying so,
// before anything starts.
func TestOpenWithoutTheLab(t *testing.T) {
	state, err := statedir.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Cluster.Provider, cfg.Machines = config.Lab, config.Lab
	if _, err := Open(context.Background(), cfg, state, nil, nil, Lab{}); err == nil || !strings.Contains(err.Error(), "the lab is not part of this program") {
		t.Fatalf("got %v, want the lab named as missing", err)
	}
}
