SELECT * EXCEPT (line_rank)
FROM (
  SELECT item.*,
    ROW_NUMBER() OVER (
      PARTITION BY item.nfe_id, item.line_number
      ORDER BY item.product_name, item.product_key, item.unit_value, item.quantity,
        item.line_total, item.emission_date
    ) AS line_rank
  FROM `${project}.${dataset}.invoice_items` AS item
  JOIN `${project}.${dataset}.invoices_current` AS head
    ON item.nfe_id = head.nfe_id AND item.content_hash = head.content_hash
)
WHERE line_rank = 1
