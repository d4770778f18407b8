package fleet

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Declared is a VM's MeshVM as the controller reports it in fleet mode:
// what kubectl get meshvms shows, with its Ready condition's reason and
// message, and the conditions behind it.
type Declared struct {
	Name         string     `json:"name"`
	Namespace    string     `json:"namespace"`
	Ready        string     `json:"ready"`
	Reason       string     `json:"reason"`
	Message      string     `json:"message"`
	Agent        string     `json:"agent"`
	Sidecar      string     `json:"sidecar"`
	Healthy      string     `json:"healthy"`
	TokenExpires *time.Time `json:"tokenExpiresAt,omitempty"`
	TokenRotated *time.Time `json:"tokenRotatedAt,omitempty"`
	Revision     string     `json:"revision"`
	// SpecRevision is the revision its spec declares ("" the default).
	SpecRevision string    `json:"specRevision,omitempty"`
	Address      string    `json:"address"`
	Created      time.Time `json:"created"`
	// Paused: spec.paused (vm revoke sets it), the controller not acting.
	Paused bool `json:"paused,omitempty"`
	// Deleting: deleted, held by its finalizer until the VM is out.
	Deleting   bool  `json:"deleting,omitempty"`
	Generation int64 `json:"generation"`
	// RenewRequest and OnboardRequest are the last requests the controller
	// acted on (vm renew --force, vm onboard).
	RenewRequest   string             `json:"renewRequest,omitempty"`
	OnboardRequest string             `json:"onboardRequest,omitempty"`
	Conditions     []metav1.Condition `json:"conditions,omitempty"`
}
