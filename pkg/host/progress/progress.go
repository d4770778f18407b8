// Package progress is the one channel long work tells what it does through,
// as it happens: typed events (a step, the VM, what happened and the cause
// of anything to act on) that the CLI renders, "[n/N] step VM: detail
// (elapsed)" or a command's prefixed line, and a controller could record.
package progress

import (
	"fmt"

	"github.com/meshvm/meshvm/pkg/reason"
)

// Step names a stage of long work.
type Step string

// The steps of up, vm onboard, vm start, vm upgrade and down. None is a
// line of its own: what a command without steps did, or how it ended.
const (
	None         Step = ""
	ControlPlane Step = "control plane"
	Workload     Step = "workload"
	Machine      Step = "machine"
	App          Step = "app"
	Agent        Step = "agent"
	Onboard      Step = "onboard"
	Healthy      Step = "healthy"
	Cluster      Step = "cluster"
	// fleet install's: the controller's image, then the controller.
	Image      Step = "image"
	Controller Step = "controller"
)

// Event is one thing done or seen. Message is what happened; the cause,
// when set, is what the renderer words advice from (after Message).
type Event struct {
	Step Step
	// VM is the VM the event is about; "" for the site.
	VM      string
	Message string
	reason.Cause
}

// Reporter is told each event; it may be called from several VMs'
// goroutines at once. A nil Reporter discards them.
type Reporter func(Event)

// Report tells e.
func (r Reporter) Report(e Event) {
	if r != nil {
		r(e)
	}
}

// Step tells a step's event for vm ("" for the site).
func (r Reporter) Step(step Step, vm, format string, args ...any) {
	r.Report(Event{Step: step, VM: vm, Message: fmt.Sprintf(format, args...)})
}

// Say tells a line of its own.
func (r Reporter) Say(format string, args ...any) {
	r.Report(Event{Message: fmt.Sprintf(format, args...)})
}
