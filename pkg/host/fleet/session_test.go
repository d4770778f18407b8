package fleet

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshvm/meshvm/pkg/host/config"
)

// eachVM works on at most parallel VMs at once, reaches that many, and
// reports failures by name in the VMs' order whatever order they end in.
func TestEachVMBounded(t *testing.T) {
	for _, tc := range []struct {
		name          string
		parallel, vms int
	}{
		{"more VMs than the bound", 3, 10},
		{"fewer VMs than the bound", 8, 2},
		{"one at a time", 1, 4},
		{"unset is the default", 0, 12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var vms []config.VM
			for i := range tc.vms {
				vms = append(vms, config.VM{Name: fmt.Sprintf("vm%d", i)})
			}
			want := min(tc.parallel, tc.vms)
			if tc.parallel == 0 {
				want = min(config.DefaultParallel, tc.vms)
			}
			var active, most atomic.Int32
			full := make(chan struct{}) // closed once want run at once
			var once sync.Once
			var calls atomic.Int32
			err := eachVM(tc.parallel, vms, func(vm config.VM) error {
				n := active.Add(1)
				defer active.Add(-1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				if n == int32(want) {
					once.Do(func() { close(full) })
				}
				if calls.Add(1) <= int32(want) {
					// The first ones wait for each other: the bound is reached.
					select {
					case <-full:
					case <-time.After(10 * time.Second):
						return errors.New("the others never ran alongside")
					}
				}
				if vm.Name != "vm0" {
					return fmt.Errorf("failed %s", vm.Name)
				}
				return nil
			})
			if got := most.Load(); got != int32(want) {
				t.Errorf("at most %d VMs at once, want %d", got, want)
			}
			var wantErrs []string
			for _, vm := range vms[1:] {
				wantErrs = append(wantErrs, vm.Name+": failed "+vm.Name)
			}
			if got := fmt.Sprint(err); err == nil && len(wantErrs) > 0 || err != nil && got != strings.Join(wantErrs, "\n") {
				t.Errorf("errors %q, want %q", got, strings.Join(wantErrs, "\n"))
			}
		})
	}
}
