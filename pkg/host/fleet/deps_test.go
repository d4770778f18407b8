package fleet_test

import (
	"testing"

	"github.com/meshvm/meshvm/internal/deptest"
)

// fleet drives the core for the CLI on any site; the lab is one site among
// them, handed in by hostctl's CLI (fleet.Lab), never linked here.
func TestFleetDoesNotLinkTheLab(t *testing.T) {
	m := deptest.Module + "/"
	deptest.Forbid(t, m+"pkg/host/fleet", m+"lab", m+"hostctl")
}
