package fleetmode_test

import (
	"testing"

	"github.com/meshvm/meshvm/internal/deptest"
)

// fleet mode's hostctl side links no lab: the lab's site starts its controller.
func TestFleetmodeDependencies(t *testing.T) {
	m := deptest.Module + "/"
	deptest.Forbid(t, m+"pkg/host/fleetmode", m+"lab", m+"hostctl", "sigs.k8s.io/controller-runtime")
}
