//! Every API Spate advertises, at every version it advertises, with requests that carry real
//! topics and records: the broker answers each with a response that decodes at that version.

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use spate_engine::protocol::versions;
use spate_engine::storage::batch::build::{batch, NewRecord};

use super::util::Broker;

fn name(text: &str) -> TopicName {
    TopicName(StrBytes::from_string(text.to_owned()))
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

fn create(topic: &str, partitions: i32) -> RequestKind {
    RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(vec![
        create_topics_request::CreatableTopic::default()
            .with_name(name(topic))
            .with_num_partitions(partitions)
            .with_replication_factor(1),
    ]))
}

#[test]
fn every_api_at_every_advertised_version() {
    let work = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &work.path().join("data"),
        &[
            "--auto-create-topics",
            "false",
            "--group-initial-rebalance-delay-ms",
            "0",
        ],
    );
    let mut connection = broker.connect();
    let ResponseKind::CreateTopics(created) =
        connection.call(ApiKey::CreateTopics, 7, create("versions", 2))
    else {
        panic!()
    };
    assert_eq!(created.topics[0].error_code, 0);
    let topic_id = created.topics[0].topic_id;
    assert!(!topic_id.is_nil());

    let advertised: Vec<_> = versions::all().collect();
    let ResponseKind::ApiVersions(listed) = connection.call(
        ApiKey::ApiVersions,
        3,
        RequestKind::ApiVersions(Default::default()),
    ) else {
        panic!()
    };
    assert_eq!(listed.api_keys.len(), advertised.len());

    let mut partitions = 2;
    for (api_key, range) in advertised {
        for version in range.min..=range.max {
            let context = format!("{api_key:?} v{version}");
            let request = match api_key {
                ApiKey::Produce => RequestKind::Produce(
                    ProduceRequest::default()
                        .with_acks(1)
                        .with_timeout_ms(5000)
                        .with_topic_data(vec![produce_request::TopicProduceData::default()
                            .with_name(name("versions"))
                            .with_partition_data(vec![
                                produce_request::PartitionProduceData::default()
                                    .with_index(0)
                                    .with_records(Some(
                                        batch(&[NewRecord::value("v", 1_000)]).freeze(),
                                    )),
                            ])]),
                ),
                ApiKey::Fetch => {
                    let mut topic = fetch_request::FetchTopic::default().with_partitions(vec![
                        fetch_request::FetchPartition::default()
                            .with_partition(0)
                            .with_fetch_offset(0)
                            .with_partition_max_bytes(1 << 20),
                    ]);
                    if version >= 13 {
                        topic.topic_id = topic_id;
                    } else {
                        topic.topic = name("versions");
                    }
                    RequestKind::Fetch(
                        FetchRequest::default()
                            .with_max_wait_ms(0)
                            .with_max_bytes(1 << 20)
                            .with_topics(vec![topic]),
                    )
                }
                ApiKey::ListOffsets => {
                    RequestKind::ListOffsets(ListOffsetsRequest::default().with_topics(vec![
                    list_offsets_request::ListOffsetsTopic::default()
                        .with_name(name("versions"))
                        .with_partitions(vec![list_offsets_request::ListOffsetsPartition::default()
                            .with_partition_index(0)
                            .with_timestamp(-1)]),
                ]))
                }
                ApiKey::Metadata => RequestKind::Metadata(MetadataRequest::default().with_topics(
                    Some(vec![metadata_request::MetadataRequestTopic::default(
                        )
                        .with_name(Some(name("versions")))]),
                )),
                ApiKey::ApiVersions => RequestKind::ApiVersions(
                    ApiVersionsRequest::default()
                        .with_client_software_name(text("tests"))
                        .with_client_software_version(text("1")),
                ),
                ApiKey::CreateTopics => create(&format!("created-v{version}"), 1),
                ApiKey::DeleteTopics => {
                    let doomed = format!("doomed-v{version}");
                    let ResponseKind::CreateTopics(made) =
                        connection.call(ApiKey::CreateTopics, 7, create(&doomed, 1))
                    else {
                        panic!()
                    };
                    assert_eq!(made.topics[0].error_code, 0, "{context}");
                    let mut request = DeleteTopicsRequest::default().with_timeout_ms(5000);
                    if version >= 6 {
                        request.topics = vec![delete_topics_request::DeleteTopicState::default()
                            .with_name(Some(name(&doomed)))];
                    } else {
                        request.topic_names = vec![name(&doomed)];
                    }
                    RequestKind::DeleteTopics(request)
                }
                ApiKey::DeleteRecords => {
                    RequestKind::DeleteRecords(DeleteRecordsRequest::default().with_topics(vec![
                        delete_records_request::DeleteRecordsTopic::default()
                            .with_name(name("versions"))
                            .with_partitions(vec![
                                delete_records_request::DeleteRecordsPartition::default()
                                    .with_partition_index(1)
                                    .with_offset(0),
                            ]),
                    ]))
                }
                ApiKey::InitProducerId => RequestKind::InitProducerId(
                    InitProducerIdRequest::default()
                        .with_transactional_id(None)
                        .with_transaction_timeout_ms(60_000)
                        .with_producer_id(ProducerId(-1))
                        .with_producer_epoch(-1),
                ),
                ApiKey::OffsetForLeaderEpoch => RequestKind::OffsetForLeaderEpoch(
                    OffsetForLeaderEpochRequest::default().with_topics(vec![
                        offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                            .with_topic(name("versions"))
                            .with_partitions(vec![
                                offset_for_leader_epoch_request::OffsetForLeaderPartition::default(
                                )
                                .with_partition(0)
                                .with_current_leader_epoch(-1)
                                .with_leader_epoch(0),
                            ]),
                    ]),
                ),
                ApiKey::DescribeConfigs => {
                    let mut request = DescribeConfigsRequest::default().with_resources(vec![
                        describe_configs_request::DescribeConfigsResource::default()
                            .with_resource_type(2)
                            .with_resource_name(text("versions")),
                        describe_configs_request::DescribeConfigsResource::default()
                            .with_resource_type(4)
                            .with_resource_name(text("1")),
                    ]);
                    request.include_synonyms = true;
                    if version >= 3 {
                        request.include_documentation = true;
                    }
                    RequestKind::DescribeConfigs(request)
                }
                ApiKey::AlterConfigs => {
                    RequestKind::AlterConfigs(AlterConfigsRequest::default().with_resources(vec![
                    alter_configs_request::AlterConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(text("versions"))
                        .with_configs(vec![alter_configs_request::AlterableConfig::default()
                            .with_name(text("retention.ms"))
                            .with_value(Some(text("86400000")))]),
                ]))
                }
                ApiKey::CreatePartitions => {
                    partitions += 1;
                    RequestKind::CreatePartitions(CreatePartitionsRequest::default().with_topics(
                        vec![
                        create_partitions_request::CreatePartitionsTopic::default()
                            .with_name(name("versions"))
                            .with_count(partitions),
                    ],
                    ))
                }
                ApiKey::IncrementalAlterConfigs => RequestKind::IncrementalAlterConfigs(
                    IncrementalAlterConfigsRequest::default().with_resources(vec![
                        incremental_alter_configs_request::AlterConfigsResource::default()
                            .with_resource_type(2)
                            .with_resource_name(text("versions"))
                            .with_configs(vec![
                                incremental_alter_configs_request::AlterableConfig::default()
                                    .with_name(text("segment.ms"))
                                    .with_config_operation(0)
                                    .with_value(Some(text("3600000"))),
                            ]),
                    ]),
                ),
                ApiKey::DescribeCluster => RequestKind::DescribeCluster(Default::default()),
                ApiKey::DescribeQuorum => {
                    RequestKind::DescribeQuorum(DescribeQuorumRequest::default().with_topics(vec![
                        describe_quorum_request::TopicData::default()
                            .with_topic_name(name("__cluster_metadata"))
                            .with_partitions(vec![
                                describe_quorum_request::PartitionData::default()
                                    .with_partition_index(0),
                            ]),
                    ]))
                }
                ApiKey::FindCoordinator => {
                    let mut request = FindCoordinatorRequest::default().with_key_type(0);
                    if version >= 4 {
                        request.coordinator_keys = vec![text("group")];
                    } else {
                        request.key = text("group");
                    }
                    RequestKind::FindCoordinator(request)
                }
                ApiKey::OffsetCommit => {
                    let group = format!("commit-v{version}");
                    standalone_commit(&group, 1)
                }
                ApiKey::OffsetFetch => {
                    let group = format!("fetch-v{version}");
                    connection.call(ApiKey::OffsetCommit, 8, standalone_commit(&group, 7));
                    let mut request = OffsetFetchRequest::default();
                    if version >= 8 {
                        request.groups =
                            vec![offset_fetch_request::OffsetFetchRequestGroup::default()
                                .with_group_id(GroupId(text(&group)))
                                .with_topics(Some(vec![
                                    offset_fetch_request::OffsetFetchRequestTopics::default()
                                        .with_name(name("versions"))
                                        .with_partition_indexes(vec![0]),
                                ]))];
                    } else {
                        request.group_id = GroupId(text(&group));
                        request.topics = Some(vec![
                            offset_fetch_request::OffsetFetchRequestTopic::default()
                                .with_name(name("versions"))
                                .with_partition_indexes(vec![0]),
                        ]);
                    }
                    RequestKind::OffsetFetch(request)
                }
                ApiKey::JoinGroup => {
                    let group = format!("join-v{version}");
                    let mut request = join_request(&group, "");
                    if version >= 4 {
                        // KIP-394: the first join of a dynamic member returns its id.
                        let ResponseKind::JoinGroup(first) = connection.call(
                            ApiKey::JoinGroup,
                            version,
                            RequestKind::JoinGroup(request.clone()),
                        ) else {
                            panic!()
                        };
                        assert_eq!(first.error_code, 79, "{context}: MEMBER_ID_REQUIRED");
                        request.member_id = first.member_id;
                    }
                    RequestKind::JoinGroup(request)
                }
                ApiKey::SyncGroup => {
                    let group = format!("sync-v{version}");
                    let (member_id, generation) = join(&mut connection, &group);
                    RequestKind::SyncGroup(
                        SyncGroupRequest::default()
                            .with_group_id(GroupId(text(&group)))
                            .with_generation_id(generation)
                            .with_member_id(member_id.clone())
                            .with_protocol_type(Some(text("consumer")))
                            .with_protocol_name(Some(text("range")))
                            .with_assignments(vec![
                                sync_group_request::SyncGroupRequestAssignment::default()
                                    .with_member_id(member_id)
                                    .with_assignment(bytes::Bytes::from_static(b"assigned")),
                            ]),
                    )
                }
                ApiKey::Heartbeat => {
                    let group = format!("heartbeat-v{version}");
                    let (member_id, generation) = join(&mut connection, &group);
                    RequestKind::Heartbeat(
                        HeartbeatRequest::default()
                            .with_group_id(GroupId(text(&group)))
                            .with_generation_id(generation)
                            .with_member_id(member_id),
                    )
                }
                ApiKey::LeaveGroup => {
                    let group = format!("leave-v{version}");
                    let (member_id, _) = join(&mut connection, &group);
                    let mut request =
                        LeaveGroupRequest::default().with_group_id(GroupId(text(&group)));
                    if version >= 3 {
                        request.members = vec![leave_group_request::MemberIdentity::default()
                            .with_member_id(member_id)];
                    } else {
                        request.member_id = member_id;
                    }
                    RequestKind::LeaveGroup(request)
                }
                ApiKey::DescribeGroups => {
                    let group = format!("describe-v{version}");
                    join(&mut connection, &group);
                    RequestKind::DescribeGroups(
                        DescribeGroupsRequest::default().with_groups(vec![GroupId(text(&group))]),
                    )
                }
                ApiKey::ListGroups => RequestKind::ListGroups(ListGroupsRequest::default()),
                ApiKey::DeleteGroups => {
                    let group = format!("delete-v{version}");
                    connection.call(ApiKey::OffsetCommit, 8, standalone_commit(&group, 3));
                    RequestKind::DeleteGroups(
                        DeleteGroupsRequest::default()
                            .with_groups_names(vec![GroupId(text(&group))]),
                    )
                }
                ApiKey::OffsetDelete => {
                    let group = format!("offset-delete-v{version}");
                    connection.call(ApiKey::OffsetCommit, 8, standalone_commit(&group, 3));
                    RequestKind::OffsetDelete(
                        OffsetDeleteRequest::default()
                            .with_group_id(GroupId(text(&group)))
                            .with_topics(vec![
                                offset_delete_request::OffsetDeleteRequestTopic::default()
                                    .with_name(name("versions"))
                                    .with_partitions(vec![
                                    offset_delete_request::OffsetDeleteRequestPartition::default()
                                        .with_partition_index(0),
                                ]),
                            ]),
                    )
                }
                ApiKey::AlterClientQuotas => RequestKind::AlterClientQuotas(
                    AlterClientQuotasRequest::default().with_entries(vec![
                        alter_client_quotas_request::EntryData::default()
                            .with_entity(vec![alter_client_quotas_request::EntityData::default()
                                .with_entity_type(text("client-id"))
                                .with_entity_name(Some(text(&format!("quota-v{version}"))))])
                            .with_ops(vec![alter_client_quotas_request::OpData::default()
                                .with_key(text("producer_byte_rate"))
                                .with_value(1_048_576.0)]),
                    ]),
                ),
                ApiKey::DescribeClientQuotas => {
                    let entity = alter_client_quotas_request::EntityData::default()
                        .with_entity_type(text("client-id"))
                        .with_entity_name(Some(text(&format!("described-v{version}"))));
                    connection.call(
                        ApiKey::AlterClientQuotas,
                        1,
                        RequestKind::AlterClientQuotas(
                            AlterClientQuotasRequest::default().with_entries(vec![
                                alter_client_quotas_request::EntryData::default()
                                    .with_entity(vec![entity])
                                    .with_ops(vec![alter_client_quotas_request::OpData::default()
                                        .with_key(text("consumer_byte_rate"))
                                        .with_value(2048.0)]),
                            ]),
                        ),
                    );
                    RequestKind::DescribeClientQuotas(
                        DescribeClientQuotasRequest::default().with_components(vec![
                            describe_client_quotas_request::ComponentData::default()
                                .with_entity_type(text("client-id"))
                                .with_match_type(0)
                                .with_match(Some(text(&format!("described-v{version}")))),
                        ]),
                    )
                }
                ApiKey::AlterPartitionReassignments => RequestKind::AlterPartitionReassignments(
                    AlterPartitionReassignmentsRequest::default().with_topics(vec![
                        alter_partition_reassignments_request::ReassignableTopic::default()
                            .with_name(name("versions"))
                            .with_partitions(vec![
                                alter_partition_reassignments_request::ReassignablePartition::default()
                                    .with_partition_index(0)
                                    .with_replicas(Some(vec![BrokerId(1)])),
                            ]),
                    ]),
                ),
                ApiKey::ListPartitionReassignments => RequestKind::ListPartitionReassignments(
                    ListPartitionReassignmentsRequest::default(),
                ),
                ApiKey::AddPartitionsToTxn => {
                    let id = format!("add-partitions-v{version}");
                    let (producer_id, producer_epoch) = init_transaction(&mut connection, &id);
                    let topics = vec![
                        add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                            .with_name(name("versions"))
                            .with_partitions(vec![0, 1]),
                    ];
                    let request = if version >= 4 {
                        // A broker's form: transactions in a list (added, not only verified).
                        AddPartitionsToTxnRequest::default().with_transactions(vec![
                            add_partitions_to_txn_request::AddPartitionsToTxnTransaction::default()
                                .with_transactional_id(TransactionalId(text(&id)))
                                .with_producer_id(producer_id)
                                .with_producer_epoch(producer_epoch)
                                .with_topics(topics),
                        ])
                    } else {
                        AddPartitionsToTxnRequest::default()
                            .with_v3_and_below_transactional_id(TransactionalId(text(&id)))
                            .with_v3_and_below_producer_id(producer_id)
                            .with_v3_and_below_producer_epoch(producer_epoch)
                            .with_v3_and_below_topics(topics)
                    };
                    RequestKind::AddPartitionsToTxn(request)
                }
                ApiKey::AddOffsetsToTxn => {
                    let id = format!("add-offsets-v{version}");
                    RequestKind::AddOffsetsToTxn(add_offsets(&mut connection, &id))
                }
                ApiKey::EndTxn => {
                    let id = format!("end-v{version}");
                    let added = add_offsets(&mut connection, &id);
                    RequestKind::EndTxn(
                        EndTxnRequest::default()
                            .with_transactional_id(added.transactional_id)
                            .with_producer_id(added.producer_id)
                            .with_producer_epoch(added.producer_epoch)
                            .with_committed(true),
                    )
                }
                ApiKey::TxnOffsetCommit => {
                    let id = format!("txn-offset-commit-v{version}");
                    let added = add_offsets(&mut connection, &id);
                    RequestKind::TxnOffsetCommit(
                        TxnOffsetCommitRequest::default()
                            .with_transactional_id(added.transactional_id)
                            .with_group_id(added.group_id)
                            .with_producer_id(added.producer_id)
                            .with_producer_epoch(added.producer_epoch)
                            .with_generation_id(-1)
                            .with_topics(vec![
                                txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                                    .with_name(name("versions"))
                                    .with_partitions(vec![
                                    txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                                        .with_partition_index(0)
                                        .with_committed_offset(1),
                                ]),
                            ]),
                    )
                }
                ApiKey::WriteTxnMarkers => {
                    // As a coordinator sends it: the end of a transaction on a partition.
                    let id = format!("markers-v{version}");
                    let (producer_id, producer_epoch) = init_transaction(&mut connection, &id);
                    RequestKind::WriteTxnMarkers(WriteTxnMarkersRequest::default().with_markers(
                        vec![write_txn_markers_request::WritableTxnMarker::default()
                            .with_producer_id(producer_id)
                            .with_producer_epoch(producer_epoch)
                            .with_transaction_result(false)
                            .with_coordinator_epoch(0)
                            .with_topics(vec![
                                write_txn_markers_request::WritableTxnMarkerTopic::default()
                                    .with_name(name("versions"))
                                    .with_partition_indexes(vec![1]),
                            ])],
                    ))
                }
                other => panic!("{other:?} is advertised but has no test request"),
            };
            let response = connection.call(api_key, version, request);
            check(&context, &response);
        }
    }
    assert!(
        broker.log().lines().all(|line| !line.contains("ERROR")),
        "{}",
        broker.log()
    );
}

/// Checks that the response reports success where the request was valid.
fn check(context: &str, response: &ResponseKind) {
    match response {
        ResponseKind::Produce(r) => {
            let partition = &r.responses[0].partition_responses[0];
            assert_eq!(partition.error_code, 0, "{context}");
            assert!(partition.base_offset >= 0, "{context}");
        }
        ResponseKind::Fetch(r) => {
            assert_eq!(r.error_code, 0, "{context}");
            let partition = &r.responses[0].partitions[0];
            assert_eq!(partition.error_code, 0, "{context}");
            assert!(
                partition
                    .records
                    .as_ref()
                    .is_some_and(|records| !records.is_empty()),
                "{context}"
            );
        }
        ResponseKind::ListOffsets(r) => {
            let partition = &r.topics[0].partitions[0];
            assert_eq!(partition.error_code, 0, "{context}");
            assert!(partition.offset > 0, "{context}");
        }
        ResponseKind::Metadata(r) => {
            assert_eq!(r.brokers.len(), 1, "{context}");
            assert_eq!(r.topics[0].error_code, 0, "{context}");
            assert!(r.topics[0].partitions.len() >= 2, "{context}");
        }
        ResponseKind::ApiVersions(r) => assert_eq!(r.error_code, 0, "{context}"),
        ResponseKind::CreateTopics(r) => assert_eq!(r.topics[0].error_code, 0, "{context}"),
        ResponseKind::DeleteTopics(r) => assert_eq!(r.responses[0].error_code, 0, "{context}"),
        ResponseKind::DeleteRecords(r) => {
            assert_eq!(r.topics[0].partitions[0].error_code, 0, "{context}")
        }
        ResponseKind::InitProducerId(r) => {
            assert_eq!(r.error_code, 0, "{context}");
            assert!(r.producer_id.0 >= 0, "{context}");
            assert_eq!(r.producer_epoch, 0, "{context}");
        }
        ResponseKind::OffsetForLeaderEpoch(r) => {
            let partition = &r.topics[0].partitions[0];
            assert_eq!(
                (partition.error_code, partition.leader_epoch),
                (0, 0),
                "{context}"
            );
            assert!(partition.end_offset > 0, "{context}");
        }
        ResponseKind::DescribeConfigs(r) => {
            for result in &r.results {
                assert_eq!(result.error_code, 0, "{context}");
                assert!(!result.configs.is_empty(), "{context}");
            }
        }
        ResponseKind::AlterConfigs(r) => assert_eq!(r.responses[0].error_code, 0, "{context}"),
        ResponseKind::CreatePartitions(r) => assert_eq!(r.results[0].error_code, 0, "{context}"),
        ResponseKind::IncrementalAlterConfigs(r) => {
            assert_eq!(r.responses[0].error_code, 0, "{context}")
        }
        ResponseKind::AlterPartitionReassignments(r) => {
            // A single node: moving a partition onto the one broker it is on changes nothing.
            assert_eq!(r.error_code, 0, "{context}");
            assert_eq!(r.responses[0].partitions[0].error_code, 0, "{context}");
        }
        ResponseKind::ListPartitionReassignments(r) => {
            assert_eq!(r.error_code, 0, "{context}");
            assert!(r.topics.is_empty(), "{context}");
        }
        ResponseKind::DescribeCluster(r) => {
            assert_eq!(r.error_code, 0, "{context}");
            assert_eq!(r.brokers.len(), 1, "{context}");
        }
        ResponseKind::DescribeQuorum(r) => {
            // The message (v2+) does not reach v0 and v1 clients; the code does.
            assert_eq!(
                r.error_code, 42,
                "INVALID_REQUEST without a quorum: {context}"
            );
        }
        ResponseKind::FindCoordinator(r) => {
            let (error, node) = match r.coordinators.first() {
                Some(coordinator) => (coordinator.error_code, coordinator.node_id),
                None => (r.error_code, r.node_id),
            };
            assert_eq!((error, node.0), (0, 1), "{context}");
        }
        ResponseKind::OffsetCommit(r) => {
            assert_eq!(r.topics[0].partitions[0].error_code, 0, "{context}")
        }
        ResponseKind::OffsetFetch(r) => {
            let (error, offset) = match r.groups.first() {
                Some(group) => (
                    group.error_code,
                    group.topics[0].partitions[0].committed_offset,
                ),
                None => (r.error_code, r.topics[0].partitions[0].committed_offset),
            };
            assert_eq!((error, offset), (0, 7), "{context}");
        }
        ResponseKind::JoinGroup(r) => {
            assert_eq!((r.error_code, r.generation_id), (0, 1), "{context}");
            assert_eq!(r.leader, r.member_id, "{context}");
            assert_eq!(r.members.len(), 1, "{context}");
        }
        ResponseKind::SyncGroup(r) => {
            assert_eq!(r.error_code, 0, "{context}");
            assert_eq!(r.assignment.as_ref(), b"assigned", "{context}");
        }
        ResponseKind::Heartbeat(r) => assert_eq!(r.error_code, 0, "{context}"),
        ResponseKind::LeaveGroup(r) => {
            assert_eq!(r.error_code, 0, "{context}");
            assert!(
                r.members.iter().all(|member| member.error_code == 0),
                "{context}"
            );
        }
        ResponseKind::DescribeGroups(r) => {
            assert_eq!(r.groups[0].error_code, 0, "{context}");
            assert_eq!(r.groups[0].members.len(), 1, "{context}");
        }
        ResponseKind::ListGroups(r) => {
            assert_eq!(r.error_code, 0, "{context}");
            assert!(!r.groups.is_empty(), "{context}");
        }
        ResponseKind::DeleteGroups(r) => assert_eq!(r.results[0].error_code, 0, "{context}"),
        ResponseKind::OffsetDelete(r) => {
            assert_eq!(r.error_code, 0, "{context}");
            assert_eq!(r.topics[0].partitions[0].error_code, 0, "{context}");
        }
        ResponseKind::AlterClientQuotas(r) => {
            assert_eq!(r.entries.len(), 1, "{context}");
            assert_eq!(r.entries[0].error_code, 0, "{context}");
        }
        ResponseKind::DescribeClientQuotas(r) => {
            assert_eq!(r.error_code, 0, "{context}");
            let entries = r.entries.as_ref().expect("entries");
            assert_eq!(entries.len(), 1, "{context}");
            assert_eq!(entries[0].values[0].key.as_str(), "consumer_byte_rate");
            assert_eq!(entries[0].values[0].value, 2048.0, "{context}");
        }
        ResponseKind::AddPartitionsToTxn(r) => {
            let topics = match r.results_by_transaction.first() {
                Some(transaction) => &transaction.topic_results,
                None => &r.results_by_topic_v3_and_below,
            };
            let partitions = &topics[0].results_by_partition;
            assert_eq!(partitions.len(), 2, "{context}");
            assert!(
                partitions
                    .iter()
                    .all(|partition| partition.partition_error_code == 0),
                "{context}"
            );
        }
        ResponseKind::AddOffsetsToTxn(r) => assert_eq!(r.error_code, 0, "{context}"),
        ResponseKind::EndTxn(r) => assert_eq!(r.error_code, 0, "{context}"),
        ResponseKind::TxnOffsetCommit(r) => {
            assert_eq!(r.topics[0].partitions[0].error_code, 0, "{context}")
        }
        ResponseKind::WriteTxnMarkers(r) => {
            assert_eq!(
                r.markers[0].topics[0].partitions[0].error_code, 0,
                "{context}"
            )
        }
        other => panic!("{context}: unexpected {other:?}"),
    }
}

/// InitProducerId for transactional id `id`: its producer id and epoch.
fn init_transaction(connection: &mut super::util::Connection, id: &str) -> (ProducerId, i16) {
    let ResponseKind::InitProducerId(response) = connection.call(
        ApiKey::InitProducerId,
        4,
        RequestKind::InitProducerId(
            InitProducerIdRequest::default()
                .with_transactional_id(Some(TransactionalId(text(id))))
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        ),
    ) else {
        panic!()
    };
    assert_eq!(response.error_code, 0, "InitProducerId for {id}");
    (response.producer_id, response.producer_epoch)
}

/// A transaction of `id` that added the offsets of group `id-group`: the AddOffsetsToTxn it
/// sent (the answer was checked).
fn add_offsets(connection: &mut super::util::Connection, id: &str) -> AddOffsetsToTxnRequest {
    let (producer_id, producer_epoch) = init_transaction(connection, id);
    let request = AddOffsetsToTxnRequest::default()
        .with_transactional_id(TransactionalId(text(id)))
        .with_producer_id(producer_id)
        .with_producer_epoch(producer_epoch)
        .with_group_id(GroupId(text(&format!("{id}-group"))));
    let ResponseKind::AddOffsetsToTxn(response) = connection.call(
        ApiKey::AddOffsetsToTxn,
        3,
        RequestKind::AddOffsetsToTxn(request.clone()),
    ) else {
        panic!()
    };
    assert_eq!(response.error_code, 0, "AddOffsetsToTxn for {id}");
    request
}

/// An OffsetCommit from a consumer without a group (generation -1).
fn standalone_commit(group: &str, offset: i64) -> RequestKind {
    RequestKind::OffsetCommit(
        OffsetCommitRequest::default()
            .with_group_id(GroupId(text(group)))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![
                offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(name("versions"))
                    .with_partitions(vec![
                        offset_commit_request::OffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(offset),
                    ]),
            ]),
    )
}

fn join_request(group: &str, member_id: &str) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(GroupId(text(group)))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(text(member_id))
        .with_protocol_type(text("consumer"))
        .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
        )
        .with_name(text("range"))
        .with_metadata(bytes::Bytes::from_static(b"subscription"))])
}

/// Joins `group` as its only member (JoinGroup v3, before KIP-394); returns the member id and
/// generation.
fn join(connection: &mut super::util::Connection, group: &str) -> (StrBytes, i32) {
    let ResponseKind::JoinGroup(joined) = connection.call(
        ApiKey::JoinGroup,
        3,
        RequestKind::JoinGroup(join_request(group, "")),
    ) else {
        panic!()
    };
    assert_eq!(joined.error_code, 0, "joining {group}");
    (joined.member_id, joined.generation_id)
}
