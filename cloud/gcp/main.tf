# A Google Cloud passthrough Network Load Balancer (regional backend service)
# in front of a tandem pair: clients use the forwarding rule's address
# instead of a virtual IP; the health check asks each node whether it serves.
#
#   terraform init && terraform apply -var project=... -var region=... \
#     -var network=... -var 'node_instance_groups=[...]'

terraform {
  required_providers {
    google = { source = "hashicorp/google", version = ">= 5.0" }
  }
}

variable "project" { type = string }
variable "region" { type = string }
variable "network" { type = string }
variable "node_instance_groups" {
  type        = list(string)
  description = "One unmanaged instance group per zone, each holding one node"
}
variable "node_tag" {
  type    = string
  default = "tandem-node"
}
variable "module_name" {
  type    = string
  default = "app"
}
variable "service_port" {
  type    = number
  default = 8080
}
variable "health_port" {
  type        = number
  default     = 9453
  description = "tandem's lb_port"
}

provider "google" {
  project = var.project
  region  = var.region
}

resource "google_compute_region_health_check" "primary" {
  name                = "tandem-${var.module_name}-primary"
  region              = var.region
  check_interval_sec  = 2
  timeout_sec         = 1
  healthy_threshold   = 1
  unhealthy_threshold = 2

  http_health_check {
    port         = var.health_port
    request_path = "/primary/${var.module_name}"
  }
}

resource "google_compute_region_backend_service" "tandem" {
  name                  = "tandem-${var.module_name}"
  region                = var.region
  protocol              = "TCP"
  load_balancing_scheme = "EXTERNAL"
  health_checks         = [google_compute_region_health_check.primary.id]

  dynamic "backend" {
    for_each = var.node_instance_groups
    content {
      group          = backend.value
      balancing_mode = "CONNECTION"
    }
  }

  connection_draining_timeout_sec = 0
}

resource "google_compute_address" "tandem" {
  name   = "tandem-${var.module_name}"
  region = var.region
}

resource "google_compute_forwarding_rule" "tandem" {
  name                  = "tandem-${var.module_name}"
  region                = var.region
  ip_address            = google_compute_address.tandem.address
  ip_protocol           = "TCP"
  ports                 = [tostring(var.service_port)]
  load_balancing_scheme = "EXTERNAL"
  backend_service       = google_compute_region_backend_service.tandem.id
}

resource "google_compute_firewall" "health" {
  name          = "tandem-health"
  network       = var.network
  direction     = "INGRESS"
  source_ranges = ["35.191.0.0/16", "130.211.0.0/22", "209.85.152.0/22", "209.85.204.0/22"]
  target_tags   = [var.node_tag]

  allow {
    protocol = "tcp"
    ports    = [tostring(var.health_port)]
  }
}

output "address" {
  value = google_compute_address.tandem.address
}
