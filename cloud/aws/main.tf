# A Network Load Balancer in front of a tandem pair on AWS. Clients use the
# NLB's DNS name (or an Elastic IP per subnet) instead of a virtual IP; the
# target group's health check asks each node whether it serves the module.
#
#   terraform init && terraform apply -var vpc_id=... -var 'subnet_ids=[...]' \
#     -var node1_instance_id=i-... -var node2_instance_id=i-... \
#     -var node_security_group_id=sg-... -var vpc_cidr=10.0.0.0/16

terraform {
  required_providers {
    aws = { source = "hashicorp/aws", version = ">= 5.0" }
  }
}

variable "vpc_id" { type = string }
variable "vpc_cidr" {
  type        = string
  description = "NLB health checks come from the NLB's own addresses inside the VPC"
}
variable "subnet_ids" {
  type        = list(string)
  description = "One subnet per availability zone holding a node"
}
variable "node1_instance_id" { type = string }
variable "node2_instance_id" { type = string }
variable "node_security_group_id" { type = string }
variable "module_name" {
  type    = string
  default = "app"
}
variable "service_port" {
  type        = number
  default     = 8080
  description = "The application's port on both nodes"
}
variable "health_port" {
  type        = number
  default     = 9453
  description = "tandem's lb_port"
}
variable "client_cidrs" {
  type    = list(string)
  default = ["0.0.0.0/0"]
}

resource "aws_lb" "tandem" {
  name                             = "tandem-${var.module_name}"
  load_balancer_type               = "network"
  internal                         = false
  subnets                          = var.subnet_ids
  enable_cross_zone_load_balancing = true
}

resource "aws_lb_target_group" "tandem" {
  name                   = "tandem-${var.module_name}"
  port                   = var.service_port
  protocol               = "TCP"
  vpc_id                 = var.vpc_id
  target_type            = "instance"
  deregistration_delay   = 0
  connection_termination = true

  health_check {
    protocol            = "HTTP"
    port                = tostring(var.health_port)
    path                = "/primary/${var.module_name}"
    matcher             = "200"
    interval            = 5
    timeout             = 2
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
}

resource "aws_lb_target_group_attachment" "node1" {
  target_group_arn = aws_lb_target_group.tandem.arn
  target_id        = var.node1_instance_id
  port             = var.service_port
}

resource "aws_lb_target_group_attachment" "node2" {
  target_group_arn = aws_lb_target_group.tandem.arn
  target_id        = var.node2_instance_id
  port             = var.service_port
}

resource "aws_lb_listener" "tandem" {
  load_balancer_arn = aws_lb.tandem.arn
  port              = var.service_port
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.tandem.arn
  }
}

resource "aws_security_group_rule" "health" {
  type              = "ingress"
  security_group_id = var.node_security_group_id
  protocol          = "tcp"
  from_port         = var.health_port
  to_port           = var.health_port
  cidr_blocks       = [var.vpc_cidr]
  description       = "tandem health checks from the NLB"
}

resource "aws_security_group_rule" "service" {
  type              = "ingress"
  security_group_id = var.node_security_group_id
  protocol          = "tcp"
  from_port         = var.service_port
  to_port           = var.service_port
  cidr_blocks       = var.client_cidrs
  description       = "clients through the NLB (client addresses are preserved)"
}

output "address" {
  value = aws_lb.tandem.dns_name
}
