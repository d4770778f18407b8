package fleetmode

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
)

// vm upgrade's wait: a MeshVM is on a revision once the controller says
// UpToDate for the generation that declares it; a revision no istiod runs
// ends the wait at once; an older generation's verdict counts for neither.
func TestUpgradeWaitReadsTheControllersVerdict(t *testing.T) {
	upToDate := func(gen int64, status metav1.ConditionStatus, reason string) Row {
		return Row{Name: "vm1", Generation: 2, SpecRevision: "canary",
			Conditions: []metav1.Condition{{Type: v1alpha1.ConditionUpToDate, Status: status, Reason: reason, Message: "no istiod runs revision canary", ObservedGeneration: gen}}}
	}
	if !onRevision("canary")(upToDate(2, metav1.ConditionTrue, "UpToDate")) {
		t.Error("UpToDate for the current generation: not on canary")
	}
	if onRevision("canary")(upToDate(1, metav1.ConditionTrue, "UpToDate")) {
		t.Error("an older generation's UpToDate taken for the move")
	}
	if onRevision("")(upToDate(2, metav1.ConditionTrue, "UpToDate")) {
		t.Error("a MeshVM declaring canary taken as on the default revision")
	}
	if err := revisionNotRunning(upToDate(2, metav1.ConditionFalse, "RevisionNotRunning")); err == nil {
		t.Error("RevisionNotRunning for the current generation does not end the wait")
	}
	if err := revisionNotRunning(upToDate(1, metav1.ConditionFalse, "RevisionNotRunning")); err != nil {
		t.Errorf("an older generation's RevisionNotRunning ended the wait: %v", err)
	}
	if got := declared(Row{Revision: "default"}); got != "" {
		t.Errorf("declared of a MeshVM on the default revision: %q", got)
	}
}
