SELECT * EXCEPT (version_rank)
FROM (
  SELECT *,
    ROW_NUMBER() OVER (
      PARTITION BY nfe_id
      ORDER BY TIMESTAMP_TRUNC(creation_time, MILLISECOND) DESC, content_hash DESC,
        publish_time, message_id
    ) AS version_rank
  FROM `${project}.${dataset}.invoices`
)
WHERE version_rank = 1
